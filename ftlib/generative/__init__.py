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
- `preference`: preference tuning on pairs of a chosen and a rejected answer (course
  notebook 11): the answers' summed log-probabilities (`completion_logprobs`), the DPO
  and SimPO losses and their implicit rewards, the reference with the adapter off
  (`reference_logprobs`), and `PreferenceModel`, so `fit` trains it.
- `inference`: using a model you trained: load a run folder, a registered model or any
  `save_pretrained` folder (`load_for_generation`), stream a reply token by token with the
  KV cache (`stream`), a chat that keeps its conversation (`Chat`); ``ftlib generate`` and
  ``ftlib chat`` run it.

Import them by name (``from ftlib.generative import sft``); this package imports nothing
itself. The jobs that run them end to end, ``ftlib finetune --model smollm2-135m``, are
`ftlib.pipeline_llm` (supervised) and `ftlib.pipeline_preference` (DPO, SimPO), beside the
library's other jobs.
"""
