"""Generated image folders: deterministic, exact counts, exactly recorded label noise, readable RGB images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lossdiag.data.synthetic import class_names_for, main, make_image_folder


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = make_image_folder(tmp_path / "a", per_class=8, noise_fraction=0.25, seed=3)
    b = make_image_folder(tmp_path / "b", per_class=8, noise_fraction=0.25, seed=3)
    c = make_image_folder(tmp_path / "c", per_class=8, noise_fraction=0.25, seed=4)
    assert _tree(a.root) == _tree(b.root)
    assert [p.relative_to(a.root) for p in a.moved] == [p.relative_to(b.root) for p in b.moved]
    assert _tree(a.root) != _tree(c.root)


def test_layout_counts_and_class_names(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "f", n_classes=4, per_class=5)
    assert folder.class_names == ["class_a", "class_b", "class_c", "class_d"]
    assert sorted(p.name for p in folder.root.iterdir() if p.is_dir()) == folder.class_names
    assert len(folder.files) == len(set(folder.files)) == 20
    assert sorted(folder.root.rglob("*.png")) == sorted(folder.files)
    assert Counter(folder.given_class.values()) == dict.fromkeys(folder.class_names, 5)
    assert folder.moved == [] and folder.noise_fraction == 0.0
    # names carry no class, so a moved file does not give itself away
    assert all(p.stem.startswith("img_") for p in folder.files)
    assert class_names_for(30)[:2] == ["class_00", "class_01"]
    assert class_names_for(30) == sorted(class_names_for(30))


@pytest.mark.parametrize(("n_classes", "per_class", "noise"), [(3, 200, 0.08), (3, 7, 0.05), (5, 10, 0.33)])
def test_moved_fraction_is_exact_and_recorded(
    tmp_path: Path, n_classes: int, per_class: int, noise: float
) -> None:
    folder = make_image_folder(tmp_path / "f", n_classes, per_class, image_size=8, noise_fraction=noise)
    n = n_classes * per_class
    assert len(folder.moved) == round(noise * n)
    for path in folder.files:
        assert path.parent.name == folder.given_class[path]
        assert folder.is_moved(path) == (path in folder.moved)
    assert all(folder.true_class[p] != folder.given_class[p] for p in folder.moved)
    # spread over the true classes as evenly as possible, and every class keeps most of its images
    per_true = Counter(folder.true_class[p] for p in folder.moved)
    counts = [per_true.get(name, 0) for name in folder.class_names]
    assert max(counts) - min(counts) <= 1
    assert Counter(folder.true_class.values()) == dict.fromkeys(folder.class_names, per_class)


def test_images_are_rgb_of_the_requested_size(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "f", per_class=4, noise_fraction=0.2)
    sizes = set()
    for path in folder.files:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            sizes.add(img.size)
            arr = np.asarray(img)
        # pixel noise, colour jitter and stripes: never a flat image
        assert arr.std() > 10 and arr.min() < 128 < arr.max()
    assert sizes == {(32, 32)}
    other = make_image_folder(tmp_path / "g", n_classes=2, per_class=2, image_size=16, fmt="jpg")
    assert all(p.suffix == ".jpg" and Image.open(p).size == (16, 16) for p in other.files)


def test_classes_differ_by_stripe_orientation(tmp_path: Path) -> None:
    """The class signal is the orientation: horizontal stripes (class_a) vary along y, not along x."""
    folder = make_image_folder(tmp_path / "f", per_class=30, image_size=32)

    def gradient_ratio(path: Path) -> float:
        g = np.asarray(Image.open(path).convert("L"), dtype=float)[8:24, 8:24]
        return np.abs(np.diff(g, axis=0)).mean() / np.abs(np.diff(g, axis=1)).mean()

    ratios = {
        name: np.median([gradient_ratio(p) for p in folder.files if folder.true_class[p] == name])
        for name in folder.class_names
    }
    assert ratios["class_a"] > 1.2 * max(ratios["class_b"], ratios["class_c"])


def test_reuses_a_completed_folder_with_the_same_arguments(tmp_path: Path) -> None:
    first = make_image_folder(tmp_path / "f", per_class=6, noise_fraction=0.2, seed=2)
    before = {p: p.stat().st_mtime_ns for p in first.files}
    again = make_image_folder(tmp_path / "f", per_class=6, noise_fraction=0.2, seed=2)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in again.files} == before
    with pytest.raises(ValueError, match="not empty"):
        make_image_folder(tmp_path / "f", per_class=6, noise_fraction=0.2, seed=3)
    with pytest.raises(ValueError, match="not empty"):
        make_image_folder(tmp_path / "f", per_class=6, noise_fraction=0.2, seed=2, reuse=False)


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_image_folder(tmp_path / "full")
    for kwargs in ({"n_classes": 1}, {"noise_fraction": 1.0}, {"fmt": "gif"}, {"per_class": 0}):
        with pytest.raises(ValueError):
            make_image_folder(tmp_path / "new", **kwargs)  # type: ignore[arg-type]


def test_cli_prints_one_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = main(
        [str(tmp_path / "cli"), "--classes", "3", "--per-class", "10", "--noise", "0.1", "--seed", "1"]
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "30 images in 3 classes" in out and "3 moved" in out
    assert len(folder.moved) == 3
    with pytest.raises(SystemExit):
        main([str(tmp_path / "cli")])


@pytest.mark.slow
def test_shallownet_learns_it_but_not_at_once(tmp_path: Path) -> None:
    """The point of the generator: a one-conv net needs tens of epochs and stays below 1.0 val accuracy."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    folder = make_image_folder(tmp_path / "f", per_class=200, seed=0)
    x = torch.tensor(np.stack([np.asarray(Image.open(p)) for p in folder.files])).permute(0, 3, 1, 2) / 255.0
    y = torch.tensor([folder.class_names.index(folder.given_class[p]) for p in folder.files])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:450], order[450:]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 32 * 32, 3),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.005, momentum=0.9)
    accuracy = []
    for _ in range(30):
        for batch in train[torch.randperm(len(train))].split(32):
            loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accuracy.append((net(x[val]).argmax(1) == y[val]).float().mean().item())
    assert accuracy[0] < 0.6
    assert 0.7 <= max(accuracy) < 1.0
