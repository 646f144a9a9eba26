"""Class lists: synonyms, the background rule and the label each class gets (SPEC 3.3).

One rule for every command: the final class list is the user's classes in order,
with a class "background" put first when no class has the synonym "background"
(``--no-background`` turns that off). A pixel's label is its class's index in the
final list; 255 is nodata, so at most 255 classes fit in a uint8 label.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reattn_batch.workers.errors import InputError

BACKGROUND = "background"
MAX_CLASSES = 255  # labels 0..254; 255 = nodata


@dataclasses.dataclass(frozen=True)
class ClassList:
    """synonyms[c] are the text queries of class c (its name is synonyms[c][0])."""

    synonyms: tuple[tuple[str, ...], ...]
    background_index: int | None

    @property
    def names(self) -> list[str]:
        return [group[0] for group in self.synonyms]

    @property
    def queries(self) -> list[str]:
        """Every synonym, class by class: the Q text queries, in logit order."""
        return [name for group in self.synonyms for name in group]

    @property
    def query_class(self) -> list[int]:
        """For each query, the index of its class."""
        return [c for c, group in enumerate(self.synonyms) for _ in group]

    def as_dict(self) -> dict[str, object]:
        return {
            "names": self.names,
            "synonyms": [list(g) for g in self.synonyms],
            "background_index": self.background_index,
        }


def _split_classes(text: str) -> list[list[str]]:
    """ "road/parking lot,building" -> [["road", "parking lot"], ["building"]]."""
    return [[s.strip() for s in item.split("/")] for item in text.split(",")]


def _read_classes_file(path: Path) -> list[list[str]]:
    """SegEarth-OV's format: one class a line, synonyms separated by commas.

    Read as UTF-8; a leading byte-order mark (Windows editors write one) is dropped, not
    made part of the first class name.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise InputError(f"classes_file={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"classes_file={path}: not a readable text file ({exc})") from None
    return [[s.strip() for s in line.split(",")] for line in lines if line.strip()]


def build_class_list(groups: list[list[str]], add_background: bool = True) -> ClassList:
    """Validate synonym groups and apply the background rule."""
    if not groups:
        raise InputError(
            "the class list is empty: pass classes=building,road,water (or classes_file=F)"
        )
    seen: dict[str, int] = {}
    for c, group in enumerate(groups):
        for name in group:
            if not name:
                raise InputError(
                    f"class {c + 1} has an empty name or synonym: remove the stray ',' or '/'"
                )
            key = name.casefold()
            if key in seen:
                raise InputError(
                    f"'{name}' is listed twice (classes {seen[key] + 1} and {c + 1}): "
                    "each class and synonym must be unique"
                )
            seen[key] = c
    groups = [list(g) for g in groups]
    if add_background and BACKGROUND not in seen:
        groups.insert(0, [BACKGROUND])
    if len(groups) > MAX_CLASSES:
        raise InputError(
            f"{len(groups)} classes do not fit in a uint8 label "
            f"(at most {MAX_CLASSES}, 255 is nodata): merge or drop classes"
        )
    background = next(
        (c for c, g in enumerate(groups) if BACKGROUND in {s.casefold() for s in g}), None
    )
    return ClassList(synonyms=tuple(tuple(g) for g in groups), background_index=background)


def parse_classes(
    classes: str | None, classes_file: str | Path | None = None, add_background: bool = True
) -> ClassList:
    """From ``--classes`` text or ``--classes-file`` (exactly one of them)."""
    if classes is not None and classes_file is not None:
        raise InputError("pass either `classes` or `classes_file`, not both")
    if classes_file is not None:
        groups = _read_classes_file(Path(classes_file))
    elif classes is not None and classes.strip():
        groups = _split_classes(classes)
    else:
        groups = []
    return build_class_list(groups, add_background)
