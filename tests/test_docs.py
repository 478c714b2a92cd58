"""The README stays a newcomer's page, and the docs' links and commands stay true.

* README.md is at most 12 KiB: measurements belong in bench/RESULTS.md, guides in docs/.
* Every measurement-like number in README.md and docs/*.md is one that bench/RESULTS.md records
  (or, for a version in docs/, pyproject.toml), so neither can quote a figure no record holds
  (the same rule and regex as tests/course/test_quoted_numbers.py, for the notebooks' quoted
  numbers); README's table and the head of RESULTS.md are written from bench/records/.
* Every relative link of README.md, docs/*.md and bench/RESULTS.md names an existing file.
* Every `make TARGET` the README shows is a target of the Makefile.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "RESULTS.md"
README_MAX_BYTES = 12_288

# Numbers in README.md that are not measurements, so bench/RESULTS.md need not hold them.
ALLOWED = {
    "3.11": "the Python version the project requires (pyproject.toml's requires-python)",
}

# As in tests/course/test_quoted_numbers.py (a test below keeps the two the same): a decimal
# with two or more digits after the point, or an integer with thousands separators.
NUMBER = re.compile(r"(?<![\w.,])(\d+\.\d{2,}|\d{1,3}(?:,\d{3})+)(?![\w]|[.,]\d)")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]+`")


def _contains(haystack: str, number: str) -> bool:
    """The number as a whole token, with or without its thousands separators."""
    for form in {number, number.replace(",", "")}:
        if re.search(rf"(?<![\d.]){re.escape(form)}(?!\d)", haystack):
            return True
    return False


def unrecorded_numbers(readme: str, results: str) -> list[str]:
    return sorted({n for n in NUMBER.findall(readme) if n not in ALLOWED and not _contains(results, n)})


def broken_links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor of this page
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    return broken


def make_targets_named(readme: str) -> set[str]:
    code = "\n".join(FENCE.findall(readme) + CODE_SPAN.findall(readme))
    return set(re.findall(r"(?<![\w./-])make ([a-z][\w-]*)", code))


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def test_the_readme_is_at_most_12_kib():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes, over {README_MAX_BYTES:,}: move measurements to bench/RESULTS.md "
        "and guides to docs/")


def test_every_number_in_the_readme_is_recorded_in_bench_results():
    missing = unrecorded_numbers(README.read_text(encoding="utf-8"), RESULTS.read_text(encoding="utf-8"))
    assert missing == [], f"README.md quotes {missing}, which bench/RESULTS.md does not record"


def test_the_allow_list_is_still_needed():
    readme = README.read_text(encoding="utf-8")
    assert all(n in NUMBER.findall(readme) for n in ALLOWED), "remove allow-list entries README.md no longer quotes"
    assert all(reason.strip() for reason in ALLOWED.values())


def test_the_number_rule_is_the_quoted_numbers_one():
    source = (ROOT / "tests" / "course" / "test_quoted_numbers.py").read_text(encoding="utf-8")
    assert NUMBER.pattern in source


def test_the_number_check_catches_an_unrecorded_figure():
    results = "test accuracy 0.8275, peak 1,239-1,244 MB"
    assert unrecorded_numbers("0.8275 and 1,244 MB; 1244 too", results) == []
    assert unrecorded_numbers("0.827 and 0.82750 and 1,330 MB", results) == ["0.827", "0.82750", "1,330"]


@pytest.mark.parametrize("path", [README, RESULTS, *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_name_existing_files(path):
    assert broken_links(path) == []


def test_the_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("")
    page.write_text("[ok](there.md#a) [web](https://x.org/nope) [here](#top) `[code](nope.md)`\n"
                    "[missing](docs/nope.md) [also](../nope/x.md#b)\n")
    assert broken_links(page) == ["docs/nope.md", "../nope/x.md#b"]


def test_every_make_target_the_readme_names_exists():
    named = make_targets_named(README.read_text(encoding="utf-8"))
    assert {"demo", "test", "lab"} <= named  # the quick start is still there
    assert named - makefile_targets() == set()


def _write_results():
    import importlib.util

    spec = importlib.util.spec_from_file_location("write_results", ROOT / "scripts" / "write_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_headline_figures_are_written_from_the_records():
    """README's table and the head of RESULTS.md are what scripts/write_results.py makes of bench/records/."""
    write_results = _write_results()
    records = write_results.load_records()
    assert records, "bench/records/ holds no record: run bench/headline.py"
    assert set(write_results.newest_jobs(records)) >= {"main", "image", "generative"}, [r["file"] for r in records]
    for path, text in write_results.written().items():
        assert path.read_text(encoding="utf-8") == text, \
            f"{path.relative_to(ROOT)} is out of date with bench/records/: run scripts/write_results.py"


def test_the_headline_table_shows_what_the_record_holds():
    write_results = _write_results()
    record = {"date": "2030-01-01", "file": "headline-x.json", "commit": "abc",
              "machine": {"cpu": "Some CPU", "family": "6", "model": "1", "flags": ["avx2"], "cores": 2, "torch": "2"},
              "jobs": {"generative": {"command": "ftlib finetune --model smollm2-135m", "precision": "bf16",
                                      "test_accuracy": 0.84567, "zero_shot_accuracy": 0.7, "training_seconds": 170.4,
                                      "wall_seconds": 484.6, "peak_memory_mb": 1277.2, "train_size": 8900,
                                      "test_size": 2000, "epochs": 1, "test_macro_f1": 0.84}}}
    table = write_results.readme_table([record])
    assert "| 0.8457 (zero-shot 0.7000) | 170 s / 485 s | 1,277 MB |" in table, table
    assert "2030-01-01 on Some CPU (family 6, model 1; avx2), 2 cores, at bf16" in table, table
    section = write_results.results_section([record])
    assert "| 8,900 / 2,000 | 1 | bf16 | 0.8457 (zero-shot 0.7000) | 0.8400 | 170 s | 485 s | 1,277 MB |" in section
    with pytest.raises(SystemExit, match="needs one"):
        write_results.replace_between("no markers", "body", "README.md")


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_every_number_in_the_docs_is_recorded(page):
    """A figure in docs/ comes from bench/RESULTS.md; a version, from pyproject.toml's requirements."""
    sources = RESULTS.read_text(encoding="utf-8") + (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    missing = unrecorded_numbers((ROOT / "docs" / page).read_text(encoding="utf-8"), sources)
    assert missing == [], f"docs/{page} quotes {missing}, which neither bench/RESULTS.md nor pyproject.toml holds"


def test_a_text_job_over_seeds_shows_its_mean_std_and_each_seed():
    write_results = _write_results()
    run = {"seed": 0, "zero_shot_rougeL": 0.145, "zero_shot_rougeL_95ci": [0.136, 0.155], "test_rougeL": 0.236,
           "test_rougeL_95ci": [0.218, 0.254], "rougeL_gain_95ci": [0.074, 0.107], "test_rouge1": 0.256,
           "test_rouge2": 0.0525, "test_predicted_words": 5.8, "test_reference_words": 5.3,
           "zero_shot_predicted_words": 17.1, "training_seconds": 200.2, "peak_memory_mb": 1400.0}
    job = {"command": "ftlib finetune --model smollm2-135m --dataset bbc-headlines", "precision": "fp32",
           "seeds": [0, 1], "test_rougeL": 0.24, "test_rougeL_std": 0.005, "zero_shot_rougeL": 0.145,
           "zero_shot_rougeL_std": 0.0, "training_seconds": 201.0, "wall_seconds": 400.0, "peak_memory_mb": 1401.0,
           "train_size": 400, "test_size": 200, "epochs": 1, "runs": [run, {**run, "seed": 1}]}
    machine = {"cpu": "Some CPU", "family": "6", "model": "1", "flags": ["avx2"], "cores": 2, "torch": "2"}
    old = {"date": "2030-01-01", "file": "headline-a.json", "machine": machine,
           "jobs": {"main": {"command": "ftlib finetune", "precision": "fp32", "test_accuracy": 0.8, "test_macro_f1": 0.8,
                             "training_seconds": 1.0, "wall_seconds": 2.0, "peak_memory_mb": 3.0, "train_size": 1,
                             "test_size": 1, "epochs": 1}}}
    new = {"date": "2030-01-02", "file": "headline-b-headlines.json", "machine": machine, "jobs": {"headlines": job}}
    table = write_results.readme_table([new, old])  # each job from the newest record that has it
    assert table.index("MiniLM-L6") < table.index("BBC headlines"), table
    assert "| ROUGE-L 0.2400 ± 0.0050 (zero-shot 0.1450 ± 0.0000) | 201 s / 400 s | 1,401 MB |" in table, table
    assert "`, seeds 0, 1)" in table and "record `headline-a.json`" in table and "record `headline-b-headlines.json`" in table
    section = write_results.results_section([new, old])
    assert "| 0 | 0.1450 (0.136-0.155) | 0.2360 (0.218-0.254) | +0.0910 (+0.074 to +0.107) | 0.2560 / 0.0525 " \
           "| 5.8 / 5.3 (zero-shot 17.1) | 200 s | 1,400 MB |" in section, section


def test_of_two_bench_records_of_one_day_the_one_written_last_is_newest(tmp_path):
    """Two preference records of one date (an Intel one, then an AMD one) were ordered by file name,
    so the README showed the older run."""
    write_results = _write_results()
    for name, finished in (("preference-2026-12-07-amd-epyc.json", "2026-12-07T19:00:00+00:00"),
                           ("preference-2026-12-07-intel-r-xeon-r-processor.json", None)):
        record = {"date": "2026-12-07", **({"finished": finished} if finished else {})}
        (tmp_path / name).write_text(json.dumps(record))
    files = [r["file"] for r in write_results.load_bench_records("preference", tmp_path)]
    assert files == ["preference-2026-12-07-amd-epyc.json", "preference-2026-12-07-intel-r-xeon-r-processor.json"]


def test_a_preference_record_with_headline_style_shows_it_beside_the_real_headlines():
    """Records from bench/preference.py keep how each model's headlines are written; older ones do not."""
    import sys
    sys.path.insert(0, str(ROOT / "bench"))
    import preference

    write_results = _write_results()
    row = {"rougeL": 0.25, "likelihood_accuracy": 0.05}
    styled = {"words": 6.0, "quoted_share": 0.2}
    seeds = []
    for seed, simpo_quoted in ((0, 0.9), (1, 0.7)):
        rows = {name: {**row, **styled} for name in preference.ROWS}
        rows["simpo"]["quoted_share"] = simpo_quoted
        rows["dpo"].update(accuracy=0.8, margin=0.25, chosen_reward=-0.06, rejected_reward=-0.31)
        job = {"training_seconds": 300.0, "wall_seconds": 700.0, "peak_memory_mb": 1280.0, "precision": "fp32"}
        seeds.append({"seed": seed, "rows": rows, "real_headlines": {"words": 5.3, "quoted_share": 0.16},
                      "held_out_pairs": 200, "held_out_articles": 200, "train_pairs": 160,
                      "jobs": {"sft": job, "dpo": job, "simpo": job}, "beta": {"dpo": 0.1, "simpo": 2.0},
                      "sft_weight": {"dpo": 1.0, "simpo": 1.0}})
    machine = {"cpu": "Some CPU", "family": "6", "model": "1", "flags": ["avx2"], "cores": 2, "torch": "2"}
    record = {"date": "2030-01-01", "file": "preference-a.json", "machine": machine, "commit": "abc",
              "commands": {"sft": "a", "dpo": "b", "simpo": "c"}, "seeds": seeds, "summary": preference.summary(seeds)}
    section = write_results.preference_section([record])
    assert "| the real headlines | | | 5.3 ± 0.0 | 16% ± 0 |" in section, section
    assert "| after SFT, then SimPO (no reference) | 0.2500 ± 0.0000 | 0.050 ± 0.000 | 6.0 ± 0.0 | 80% ± 14 |" \
        in section, section
    for seed in seeds:  # a record from before the style was kept: the table as it was
        seed.pop("real_headlines")
        for r in seed["rows"].values():
            del r["words"], r["quoted_share"]
    old = write_results.preference_section([{**record, "summary": preference.summary(seeds)}])
    assert "quoted" not in old and "| after SFT, then SimPO (no reference) | 0.2500 ± 0.0000 | 0.050 ± 0.000 |\n" in old
