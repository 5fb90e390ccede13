"""The docs say what the code does: every `da2` command they show answers `--help`, every config snippet and config
key they name is in the schema, every result file they cite exists, and every result file is cited somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from da2_platform.cli.main import main
from da2_platform.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = sorted([REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").rglob("*.md")])
SECTIONS = ("data", "model", "train", "search", "tracking")


def _blocks(language: str) -> list[tuple[Path, str]]:
    return [(doc, m.group(1)) for doc in DOCS
            for m in re.finditer(rf"```{language}\n(.*?)```", doc.read_text(encoding="utf-8"), re.DOTALL)]


def documented_commands() -> list[tuple[str, ...]]:
    """The subcommand words of every `da2 ...` line in the docs' bash blocks (up to the first option or value)."""
    found = set()
    for _, block in _blocks("bash"):
        for line in block.splitlines():
            words = line.strip().split()
            if words[:1] != ["da2"]:
                continue
            sub = []
            for word in words[1:]:
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                sub.append(word)
            found.add(tuple(sub))
    return sorted(found)


def test_the_readme_reads_in_five_minutes():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 150
    assert lines[3].startswith("make demo") and lines[4].startswith("make test")  # the two commands, on top


@pytest.mark.parametrize("words", documented_commands(), ids=" ".join)
def test_every_documented_command_exists(words, capsys):
    assert main([*words, "--help"]) == 0, words
    assert "Usage" in capsys.readouterr().out


def test_the_docs_show_the_main_commands():
    shown = {words[0] for words in documented_commands() if words}
    assert {"demo", "search", "compare", "report", "promote", "train", "predict", "data", "policy", "evaluate",
            "model-info"} <= shown


def test_every_documented_config_snippet_validates():
    snippets = _blocks("yaml")
    assert snippets
    for doc, block in snippets:
        try:
            ExperimentConfig.model_validate(yaml.safe_load(block))
        except ValueError as e:
            raise AssertionError(f"{doc.relative_to(REPO)}: a config snippet the schema refuses: {e}") from None


def _key_exists(key: str) -> bool:
    model: type | None = ExperimentConfig
    for part in key.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        model = next((a for a in (annotation, *getattr(annotation, "__args__", ())) if hasattr(a, "model_fields")),
                     None)
    return True


def test_every_documented_config_key_exists():
    pattern = re.compile(rf"`((?:{'|'.join(SECTIONS)})\.[a-z_][a-z0-9_.]*+)(?!\*)")  # `data.synth_*`: a family
    keys = {(doc.relative_to(REPO), m.group(1).rstrip(".")) for doc in DOCS
            for m in pattern.finditer(doc.read_text(encoding="utf-8"))}
    assert len(keys) > 20
    assert [k for k in keys if not _key_exists(k[1])] == []


def _cited() -> set[Path]:
    cited = set()
    for doc in DOCS:
        text = re.sub(r"```bash\n.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)  # commands' outputs
        refs = re.findall(r"benchmarks/results/[A-Za-z0-9_./-]*", text)
        if doc == REPO / "benchmarks" / "README.md":
            refs += ["benchmarks/" + r for r in re.findall(r"(?<![/\w])results/[A-Za-z0-9_./-]*", text)]
        cited |= {REPO / r.rstrip(".") for r in refs if "*" not in r}
    return cited


def test_no_doc_cites_a_missing_result():
    missing = sorted(str(p.relative_to(REPO)) for p in _cited() if not p.exists())
    assert missing == []


def test_every_result_file_is_cited():
    cited = _cited()
    files = [p for p in RESULTS.rglob("*") if p.is_file()]
    uncited = sorted(str(p.relative_to(REPO)) for p in files
                     if not any(p == c or c in p.parents for c in cited if c != RESULTS))
    assert files and uncited == []


def test_every_local_link_in_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert broken == []


def test_every_benchmark_writes_through_the_harness():
    scripts = [p for p in (REPO / "benchmarks").glob("*.py") if p.name != "harness.py"]
    assert scripts and [p.name for p in scripts if "write_result(" not in p.read_text(encoding="utf-8")] == []
