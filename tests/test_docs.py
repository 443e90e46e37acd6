"""The README is a front page and every link and named file in the docs exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_PATHLIKE = re.compile(r"^[\w.\-/]+$")
_FILE_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".json", ".toml", ".sh", ".safetensors", ".png", ".txt")


def _markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where a `[x](y)` is not a link."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading).strip().lower()  # markup is not part of the anchor
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(path: Path) -> list[str]:
    links = _LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]  # no http:, mailto:


def _architecture_section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Architecture\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Architecture' section"
    return match.group(1)


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {MAX_README_LINES} and move the rest to docs/"
    )


def test_docs_index_lists_every_page() -> None:
    index = ROOT / "docs" / "index.md"
    linked = {Path(link.split("#")[0]).name for link in _relative_links(index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages, "docs/ holds no pages"
    assert pages <= linked, f"docs/index.md does not link {sorted(pages - linked)}"


def test_relative_links_point_to_existing_files() -> None:
    broken = []
    checked = 0
    for md in _markdown_files():
        for link in _relative_links(md):
            target, _, anchor = link.partition("#")
            dest = (md.parent / target).resolve() if target else md
            checked += 1
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {link} (no file {target})")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {link} (no heading '#{anchor}' in {target or md.name})")
    assert checked >= 10, f"only {checked} relative links found in README.md and docs/: is the link pattern wrong?"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_architecture_section_names_existing_files() -> None:
    named = [
        code.strip("`")
        for code in _INLINE_CODE.findall(_architecture_section())
        if _PATHLIKE.match(code.strip("`")) and ("/" in code or code.strip("`").endswith(_FILE_SUFFIXES))
    ]
    assert len(named) >= 10, f"the architecture section names only {len(named)} files: {named}"
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"README.md's architecture section names files that do not exist: {missing}"


def test_slug_matches_github() -> None:
    assert _slug("Block caching from measurements: calibrate → schedule → correction") == (
        "block-caching-from-measurements-calibrate--schedule--correction"
    )
    assert _slug("Scale-out: `generate` on one or many processes (torchrun)") == (
        "scale-out-generate-on-one-or-many-processes-torchrun"
    )
