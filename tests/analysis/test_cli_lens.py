"""``lmforge lens``: prints the table of a trained run and draws the heatmap."""

from __future__ import annotations

from lmforge.cli import main


def test_lens_command(trained_stories, tmp_path, capsys) -> None:
    png = tmp_path / "lens.png"
    argv = ["lens", str(trained_stories.run_dir), "--text", "Once upon a time", "--top-k", "3"]
    assert main([*argv, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "logit lens of step 150" in out and "top-3" in out and "block 2" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["lens", str(trained_stories.run_dir), "--text", ""]) == 2
    assert "ids is empty" in capsys.readouterr().err


def test_embed_command(trained_stories, tmp_path, capsys) -> None:
    import numpy as np

    lines = [f"The little rabbit number {i} ran into the garden and hid." for i in range(12)]
    (tmp_path / "texts.txt").write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("\n".join(lines[6:]) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    argv = ["embed", str(trained_stories.run_dir), "--texts", str(tmp_path / "texts.txt")]
    argv += ["--reference", str(tmp_path / "ref.txt"), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "raw" in printed and "standardised" in printed
    emb = np.load(out)
    assert emb.shape == (6, trained_stories.model.config.d_model)
