"""Generative models: fine-tuning a chat model, decoding, and measuring what it writes.

The modules, read in this order:

- `sft`: supervised fine-tuning of a causal LM (course notebook 09). Chat-template examples
  whose labels are the answer only, right padding for training and left padding for
  generation, batches grouped by length, the shifted loss, `SFTModel` (so
  `ftlib.train.fit` trains it), LoRA adapters (add, merge, save, load), scoring answer
  choices, batched greedy generation.
- `chat`: conversations (``{"role", "content"}`` messages, TRL's and OpenAI's format) as
  training examples: every assistant reply labelled, whole oldest exchanges dropped when
  too long (`build_chat_example`), and one-line errors for what is not a conversation.
- `decoding`: from next-token scores to text: greedy, temperature and nucleus (top-p)
  sampling (`sample_next_token`), and a decode loop with the KV cache
  (`generate_with_cache`).
- `metrics`: generated text against a reference: ROUGE-1, ROUGE-2 and ROUGE-L F1, lengths.
- `forgetting`: what the fine-tuned model still says of what it said before: the same
  general prompts asked before and after, and how likely the old replies still are.

Import them by name (``from ftlib.generative import sft``); this package imports nothing
itself. The job that runs them end to end, ``ftlib finetune --model smollm2-135m``, is
`ftlib.pipeline_llm`, beside the library's other jobs.
"""
