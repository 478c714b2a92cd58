"""ftlib's DPO against TRL's ``DPOTrainer`` on the same batch: a peer cross-check.

Runs where TRL is installed (the course environment has none: skipped there); the check
against the paper's formula by hand is tests/test_generative_preference.py's and always runs.
The comparison itself is bench/llm/dpo_vs_trl.py's (which adds SmolLM2 on real pairs): a
real ``DPOTrainer`` (sigmoid loss, beta 0.1, fp32) scores the pairs with its own collator,
``compute_loss`` and ``compute_ref_log_probs``; ftlib scores the same token ids with
``with_reference``, ``sequence_logprobs``, ``dpo_loss`` and ``PreferenceModel``: the loss, the
rewards, the log-probabilities (policy and reference) and the loss's gradients must agree.
"""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dpo_vs_trl", ROOT / "bench" / "llm" / "dpo_vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _explain(result) -> str:
    ours, theirs = result["ftlib"], result["trl"]
    return (f"{result['case']} on {result['token_ids']}'s token ids: ftlib's DPO differs from TRL's DPOTrainer: "
            f"{result['failures']}\nftlib: loss {ours['loss']}, rewards {ours['rewards_chosen']} / "
            f"{ours['rewards_rejected']}, logps {ours['logps_chosen']} / {ours['logps_rejected']}, reference "
            f"{ours['ref_logps_chosen']} / {ours['ref_logps_rejected']}\nTRL:   loss {theirs['loss']}, rewards "
            f"{theirs['rewards_chosen']} / {theirs['rewards_rejected']}, logps {theirs['logps_chosen']} / "
            f"{theirs['logps_rejected']}, reference {theirs['ref_logps_chosen']} / {theirs['ref_logps_rejected']}")


def _check(results):
    assert [r["token_ids"] for r in results] == ["ftlib", "trl"]  # both tokenizations, each fed to both sides
    for result in results:
        assert not result["failures"], _explain(result)
        # Not vacuous: the policy differs from the reference, so the rewards are not all zero.
        assert max(abs(r) for r in result["trl"]["rewards_chosen"] + result["trl"]["rewards_rejected"]) > 1e-2
        assert result["tokenization"]["same_prompt_ids"], "ftlib and TRL render the prompt alike"
        # The only difference of the two tokenizations: TRL's answers keep the template's newline after <|im_end|>.
        assert result["tokenization"]["trl_completion_starts_with_ftlibs"]
        assert result["tokenization"]["trl_completion_is_ftlibs_plus"] == ["\n"]


def test_full_fine_tuning_loss_rewards_and_logprobs_equal_trls(bench, tmp_path):
    """Policy: a perturbed copy of the tiny Llama; reference: the original (TRL's ref_model, ftlib's with_reference)."""
    _check(bench.tiny_full(str(tmp_path)))


def test_lora_with_the_adapter_disabled_as_reference_equals_trls(bench, tmp_path):
    """A non-zero LoRA adapter; reference: the adapter disabled (TRL: peft_config, ref_model=None)."""
    _check(bench.tiny_lora(str(tmp_path)))


def test_the_cross_check_would_catch_a_wrong_mask_or_beta(bench, tmp_path):
    """The comparison has teeth: ftlib's figures with the end of turn unlabelled, or with another beta, fail it."""
    policy, reference, tokenizer = bench.tiny_policy_and_reference()
    trainer = bench.trl_trainer(bench.copy.deepcopy(policy), tokenizer, bench.TINY_PAIRS,
                                ref_model=bench.copy.deepcopy(reference), output_dir=str(tmp_path))
    examples = bench.ftlib_examples(tokenizer, bench.TINY_PAIRS)
    theirs = bench.trl_figures(trainer, bench.to_trl_rows(examples))
    right = bench.ftlib_figures(policy, reference, examples, tokenizer.pad_token_id)
    assert bench.failures(bench.differences(right, theirs)) == []
    other_beta = bench.ftlib_figures(policy, reference, examples, tokenizer.pad_token_id, beta=0.2)
    wrong = bench.failures(bench.differences(other_beta, theirs))
    assert any(line.startswith("rewards_chosen") for line in wrong) and any(line.startswith("loss") for line in wrong)
    for example in examples:  # a classic DPO mistake: the answer's last token (the end of turn) left out
        for answer in example.values():
            answer["labels"][-1] = -100
    wrong = bench.failures(bench.differences(bench.ftlib_figures(policy, reference, examples, tokenizer.pad_token_id),
                                             theirs))
    assert any(line.startswith("logps_chosen") for line in wrong), wrong
