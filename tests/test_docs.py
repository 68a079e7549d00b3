"""docs/: the generated CLI and config references match the code; links stay inside the repository."""

import re
from pathlib import Path

from dimcl.docs import generate, main

REPO = Path(__file__).resolve().parents[1]


def test_committed_references_are_what_the_generator_writes():
    for name, text in generate().items():
        committed = (REPO / "docs" / name).read_text()
        assert committed == text, f"docs/{name} is out of date: run `python -m dimcl.docs` and commit it"


def test_the_references_cover_every_command_and_key():
    from dimcl.cli import build_parser
    from dimcl.config import Config, flatten_config

    docs = generate()
    assert "## dimcl export" in docs["cli.md"] and "`--format`" in docs["cli.md"]
    for key in flatten_config(Config().to_dict()):
        if key != "method.name" and key.startswith("method."):
            continue
        assert f"`{key}`" in docs["config.md"], key
    assert build_parser().prog == "dimcl"


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--check"]) == 1 and not (tmp_path / "cli.md").exists()
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_links_stay_inside_the_repository_and_resolve():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(REPO), f"{page.name} links outside the repository: {target}"
            assert resolved.exists(), f"{page.name} links to a missing {target}"
