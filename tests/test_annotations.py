"""Annotation files: the TAO list format, path resolution and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data.annotations import Sample, read_annotation_file, write_annotation_file
from trainer.errors import DataError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for i in range(3):
        touch(tmp_path / "data" / "rgb" / f"{i}.jpg")
        touch(tmp_path / "data" / "depth" / f"{i}.png")
    return tmp_path / "data"


def test_reads_pairs_skipping_comments_and_blank_lines(tree: Path, tmp_path: Path, monkeypatch) -> None:
    ann = tree / "train.txt"
    ann.write_text("# a comment\n\nrgb/0.jpg depth/0.png\n   \n  rgb/1.jpg\tdepth/1.png  \n")
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    samples = read_annotation_file(ann, require_depth=True)
    assert [s.line for s in samples] == [3, 5]
    assert samples[0] == Sample(image=tree.resolve() / "rgb/0.jpg", depth=tree.resolve() / "depth/0.png",
                                line=3, source=ann)
    assert samples[1].depth == tree.resolve() / "depth/1.png"
    assert samples[0].where == f"{ann}:3"


def test_relative_paths_resolve_against_the_annotation_folder_not_cwd(tree: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    (tree / "list.txt").write_text("rgb/2.jpg depth/2.png\n")
    (s,) = read_annotation_file(tree / "list.txt", require_depth=True)
    assert s.image.is_file() and s.image.parent.parent == tree.resolve()


def test_absolute_paths_and_image_only_lines(tree: Path, tmp_path: Path) -> None:
    ann = tmp_path / "lists" / "infer.txt"
    ann.parent.mkdir()
    ann.write_text(f"{tree / 'rgb/0.jpg'}\n{tree / 'rgb/1.jpg'} {tree / 'depth/1.png'}\n")
    samples = read_annotation_file(ann, require_depth=False)
    assert samples[0].image == tree / "rgb/0.jpg" and samples[0].depth is None
    assert samples[1].depth == tree / "depth/1.png"


def test_three_columns_names_file_line_and_explains_spaces(tree: Path) -> None:
    ann = tree / "train.txt"
    ann.write_text("rgb/0.jpg depth/0.png\nrgb/my photo.jpg depth/1.png\n")
    with pytest.raises(DataError) as err:
        read_annotation_file(ann, require_depth=True)
    msg = str(err.value)
    assert f"{ann}:2" in msg
    assert "3 columns" in msg and "rgb/my photo.jpg" in msg
    assert "'<image> <depth>'" in msg and "spaces" in msg


def test_missing_image_names_line_and_path(tree: Path) -> None:
    ann = tree / "train.txt"
    ann.write_text("rgb/0.jpg depth/0.png\nrgb/9.jpg depth/1.png\n")
    with pytest.raises(DataError) as err:
        read_annotation_file(ann, require_depth=True)
    msg = str(err.value)
    assert f"{ann}:2: image file not found: {tree.resolve() / 'rgb/9.jpg'}" in msg
    assert "1 referenced file not found" in msg


def test_many_missing_files_are_counted_and_five_listed(tree: Path) -> None:
    ann = tree / "train.txt"
    ann.write_text("".join(f"rgb/{i}.jpg depth/x{i}.png\n" for i in range(3)) + "rgb/7.jpg depth/8.png\n"
                   + "rgb/5.jpg\n")
    with pytest.raises(DataError) as err:
        read_annotation_file(ann, require_depth=False)
    msg = str(err.value)
    assert "6 referenced files not found" in msg
    assert msg.count("not found:") == 5 and "... and 1 more" in msg


def test_depth_column_required_for_training_lists(tree: Path) -> None:
    ann = tree / "train.txt"
    ann.write_text("rgb/0.jpg depth/0.png\nrgb/1.jpg\n")
    with pytest.raises(DataError, match=r"train\.txt:2: found only an image path"):
        read_annotation_file(ann, require_depth=True)


def test_empty_or_absent_file_is_an_error(tmp_path: Path) -> None:
    ann = tmp_path / "empty.txt"
    ann.write_text("# nothing here\n\n")
    with pytest.raises(DataError, match="no samples"):
        read_annotation_file(ann)
    with pytest.raises(DataError, match="annotation file not found"):
        read_annotation_file(tmp_path / "absent.txt")


def test_check_files_false_defers_existence_checks(tree: Path) -> None:
    ann = tree / "train.txt"
    ann.write_text("rgb/9.jpg depth/9.png\n")
    (s,) = read_annotation_file(ann, require_depth=True, check_files=False)
    assert not s.image.exists()


def test_write_relative_round_trip_and_whitespace_refused(tree: Path, tmp_path: Path) -> None:
    rows = [(tree / f"rgb/{i}.jpg", tree / f"depth/{i}.png") for i in range(3)] + [(tree / "rgb/0.jpg", None)]
    out = tree / "lists" / "../all.txt"
    assert write_annotation_file(out, rows, relative=True) == 4
    text = (tree / "all.txt").read_text().splitlines()
    assert text[0] == "rgb/0.jpg depth/0.png" and text[3] == "rgb/0.jpg"
    back = read_annotation_file(tree / "all.txt")
    assert [(s.image, s.depth) for s in back] == [(a.resolve(), b.resolve() if b else None) for a, b in rows]
    spaced = touch(tmp_path / "with space" / "a.jpg")
    with pytest.raises(DataError, match="whitespace"):
        write_annotation_file(tmp_path / "bad.txt", [(spaced, None)])
