"""cvexp-attention: the lecture's worked self-attention example, its figures, and the ViT pipeline figure."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from omegaconf import OmegaConf

import cvexp.lecture.worked_attention as worked_module
from cvexp.classifier import ImageClassifier
from cvexp.cli.attention import example_from_config, hydra_arguments, quote_value
from cvexp.errors import UserError
from cvexp.lecture.attention_example import attention_example
from cvexp.lecture.attention_figure import worked_attention_figure
from cvexp.lecture.position_embeddings import (
    checkpoint_positions,
    patch_position_embeddings,
    sinusoidal_patch_table,
)
from cvexp.lecture.positional_figures import (
    cosine_similarity_matrix,
    position_similarity_figure,
    sinusoidal_encoding_figure,
)
from cvexp.lecture.report import format_matrix, report
from cvexp.lecture.worked_attention import worked_attention
from cvexp.models.vit import VisionTransformer, explicit_attention, sinusoidal_table
from cvexp.runtime.config import compose_config
from cvexp.viz.vit_pipeline import patch_vectors, vit_pipeline_figure

LECTURE = "This is Computer Vision Class"
BIN = Path(sys.executable).parent
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def run_attention(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script, as a student runs it."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [str(BIN / "cvexp-attention"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------------------------------------
# The numbers: the ViT's own functions, and the lecture's formulas written out
# ---------------------------------------------------------------------------------------------


def test_steps_are_the_vit_functions() -> None:
    steps = worked_attention(LECTURE, dim=10, dk=2, mask="causal", seed=0)
    t = len(steps.words)
    assert steps.words == LECTURE.split() and steps.ids.tolist() == [0, 1, 2, 3, 4]
    assert steps.one_hot.shape == (5, 5) and torch.equal(steps.one_hot, torch.eye(5))
    assert steps.x.shape == (5, 10) and torch.equal(steps.x, steps.one_hot @ steps.embedding)
    assert torch.equal(steps.pos, sinusoidal_table(t, 10))  # the ViT's table, from position 0
    head = steps.heads[0]
    assert head.q.shape == head.k.shape == head.v.shape == (5, 2)
    assert torch.allclose(head.q, steps.x_pos @ head.w_q)
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    out, weights = explicit_attention(
        head.q[None, None], head.k[None, None], head.v[None, None], mask
    )
    assert torch.equal(head.weights, weights[0, 0]) and torch.equal(head.output, out[0, 0])
    assert torch.equal(steps.output, head.output)
    assert steps.concat is None and steps.w_out is None


def test_the_explicit_attention_path_is_the_one_called(monkeypatch) -> None:
    calls = []

    def spy(q, k, v, attn_mask=None):
        calls.append((q.shape, k.shape, v.shape, attn_mask))
        return explicit_attention(q, k, v, attn_mask)

    monkeypatch.setattr(worked_module, "explicit_attention", spy)
    worked_attention(LECTURE, dim=10, dk=2, dv=3, num_heads=2, mask="causal")
    (q_shape, k_shape, v_shape, mask), *rest = calls
    assert not rest and q_shape == k_shape == (1, 2, 5, 2) and v_shape == (1, 2, 5, 3)
    assert mask.dtype == torch.bool and mask.tolist()[0] == [True, False, False, False, False]


def lecture_formulas(x_pos: list[list[float]], w_q, w_k, w_v, causal: bool) -> dict:
    """The lecture's steps element by element, with Python lists and math only."""
    t, d, dk, dv = len(x_pos), len(x_pos[0]), len(w_q[0]), len(w_v[0])

    def matmul(a, b):
        return [
            [sum(a[i][m] * b[m][j] for m in range(len(b))) for j in range(len(b[0]))]
            for i in range(len(a))
        ]

    q, k, v = matmul(x_pos, w_q), matmul(x_pos, w_k), matmul(x_pos, w_v)
    scores = [[sum(q[i][m] * k[j][m] for m in range(dk)) for j in range(t)] for i in range(t)]
    scaled = [[s / math.sqrt(dk) for s in row] for row in scores]
    masked = [
        [(-math.inf if causal and j > i else scaled[i][j]) for j in range(t)] for i in range(t)
    ]
    weights = []
    for row in masked:
        top = max(row)
        exps = [math.exp(s - top) if s != -math.inf else 0.0 for s in row]
        weights.append([e / sum(exps) for e in exps])
    output = [[sum(weights[i][j] * v[j][c] for j in range(t)) for c in range(dv)] for i in range(t)]
    return {"q": q, "k": k, "v": v, "scores": scores, "scaled": scaled, "masked": masked,
            "weights": weights, "output": output, "d": d}  # fmt: skip


def lecture_positional_encoding(t: int, d: int) -> list[list[float]]:
    """p(pos, 2i) = sin(pos / 10000^(2i/d)), p(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    table = [[0.0] * d for _ in range(t)]
    for pos in range(t):
        for i in range((d + 1) // 2):
            angle = pos / 10000 ** (2 * i / d)
            table[pos][2 * i] = math.sin(angle)
            if 2 * i + 1 < d:
                table[pos][2 * i + 1] = math.cos(angle)
    return table


def close(tensor: torch.Tensor, expected: list, tol: float = 1e-5) -> bool:
    """A tensor equals nested lists of floats (infinities included) within tol."""
    rows = tensor.tolist()
    return all(
        (a == b) if math.isinf(b) else abs(a - b) <= tol * (1 + abs(b))
        for row, expected_row in zip(rows, expected, strict=True)
        for a, b in zip(row, expected_row, strict=True)
    )


@pytest.mark.parametrize(("dim", "dk", "dv", "mask"), [(10, 2, None, "causal"), (7, 3, 4, "none")])
def test_steps_are_the_lecture_formulas(dim: int, dk: int, dv: int | None, mask: str) -> None:
    steps = worked_attention(LECTURE + " is fun", dim=dim, dk=dk, dv=dv, mask=mask, seed=3)
    t, v_count = len(steps.words), len(steps.vocab)
    assert steps.vocab == ["This", "is", "Computer", "Vision", "Class", "fun"]
    assert steps.ids.tolist() == [0, 1, 2, 3, 4, 1, 5]  # a repeated word keeps its integer
    one_hot = [
        [1.0 if steps.vocab.index(w) == j else 0.0 for j in range(v_count)] for w in steps.words
    ]
    assert steps.one_hot.tolist() == one_hot
    embedding = steps.embedding.tolist()
    x = [[sum(one_hot[i][m] * embedding[m][j] for m in range(v_count)) for j in range(dim)] for i in range(t)]  # fmt: skip
    assert close(steps.x, x)
    p = lecture_positional_encoding(t, dim)
    assert close(steps.pos, p)
    x_pos = [[x[i][j] + p[i][j] for j in range(dim)] for i in range(t)]
    assert close(steps.x_pos, x_pos)
    head = steps.heads[0]
    want = lecture_formulas(
        x_pos, head.w_q.tolist(), head.w_k.tolist(), head.w_v.tolist(), mask == "causal"
    )
    for name in ("q", "k", "v", "scores", "scaled", "masked", "weights", "output"):
        assert close(getattr(head, name), want[name], tol=1e-4), name
    assert head.v.shape[1] == (dv or dk)


def test_lecture_sentence_known_values() -> None:
    """The lecture's P for 'This is Computer Vision Class', d = 10, by hand."""
    steps = worked_attention(LECTURE, dim=10, dk=2, mask="causal")
    assert steps.pos[0].tolist() == [0.0, 1.0] * 5  # position 0: sin 0, cos 0
    assert math.isclose(steps.pos[1, 0], math.sin(1), rel_tol=1e-6)  # 'is', j = 0
    assert math.isclose(steps.pos[4, 3], math.cos(4 / 10000 ** (2 / 10)), rel_tol=1e-6)


def test_mask_rows_and_seed() -> None:
    steps = worked_attention(LECTURE, dim=10, dk=2, mask="causal", seed=0)
    head = steps.heads[0]
    above = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert torch.isinf(head.masked[above]).all() and (head.masked[above] < 0).all()
    assert torch.isfinite(head.masked[~above]).all()
    assert (head.weights[above] == 0).all() and (head.weights[~above] > 0).all()
    assert torch.allclose(head.weights.sum(-1), torch.ones(5))
    assert torch.equal(
        head.weights[0], torch.tensor([1.0, 0, 0, 0, 0])
    )  # the first word sees itself
    unmasked = worked_attention(LECTURE, dim=10, dk=2, mask="none", seed=0)
    assert unmasked.mask is None and torch.equal(unmasked.heads[0].masked, head.scaled)
    assert (unmasked.heads[0].weights > 0).all()
    again = worked_attention(LECTURE, dim=10, dk=2, mask="causal", seed=0)
    assert torch.equal(again.output, steps.output)  # fixed seed: the same numbers
    other = worked_attention(LECTURE, dim=10, dk=2, mask="causal", seed=1)
    assert not torch.equal(other.embedding, steps.embedding)


def test_heads_concat_times_w_out() -> None:
    steps = worked_attention(LECTURE, dim=12, num_heads=3, mask="causal")
    assert steps.dk == steps.dv == 4  # dk defaults to dim / heads, as in the ViT
    assert len(steps.heads) == 3 and steps.concat.shape == (5, 12) and steps.w_out.shape == (12, 12)
    assert torch.equal(steps.concat, torch.cat([h.output for h in steps.heads], dim=-1))
    assert torch.allclose(steps.output, steps.concat @ steps.w_out)
    concat = [[x for h in steps.heads for x in h.output[i].tolist()] for i in range(5)]
    w_out = steps.w_out.tolist()
    by_hand = [[sum(concat[i][m] * w_out[m][j] for m in range(12)) for j in range(12)] for i in range(5)]  # fmt: skip
    assert close(steps.output, by_hand)
    assert not torch.allclose(steps.heads[0].weights, steps.heads[1].weights)
    explicit = worked_attention(LECTURE, dim=10, dk=2, dv=3, num_heads=2)
    assert explicit.concat.shape == (5, 6) and explicit.w_out.shape == (6, 10)
    assert explicit.output.shape == (5, 10)


@pytest.mark.parametrize(
    ("sentence", "options", "fragment"),
    [
        ("   ", {}, "sentence is empty"),
        (LECTURE, {"dk": 0}, "dk=0"),
        (LECTURE, {"dim": "ten"}, "dim='ten'"),
        (LECTURE, {"num_heads": 3}, "heads=3 does not divide dim=10"),
        (LECTURE, {"mask": "foo"}, "mask='foo'"),
    ],
)
def test_bad_options_are_one_sentence(sentence: str, options: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        worked_attention(sentence, **{"dim": 10, **options})


# ---------------------------------------------------------------------------------------------
# Printing and the command line
# ---------------------------------------------------------------------------------------------


def test_matrices_are_aligned_and_labelled() -> None:
    text = format_matrix(
        torch.tensor([[1.0, -float("inf")], [-0.001, 12.3456]]), ["a", "long"], ["x", "y"]
    )
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # right-aligned columns
    assert lines[1].split() == ["a", "1.00", "-inf"] and lines[2].split() == [
        "long",
        "0.00",
        "12.35",
    ]
    printed = report(worked_attention(LECTURE, dim=4, num_heads=2, mask="causal"))
    assert "[head 2/2]" in printed and "concat x W_out" in printed


@pytest.mark.parametrize(
    "sentence",
    [LECTURE, "It's raining, again = wet", "a ${oc.env:HOME} b", "back\\slash\\", "q'uote'", ""],
)
def test_bare_sentences_reach_the_config_as_typed(sentence: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = hydra_arguments(["-m", sentence, "dim=10"])
    assert args[0] == "-m" and args[2] == "dim=10"
    override = OverridesParser.create().parse_override(args[1])
    assert override.key_or_group == "sentence"
    assert OmegaConf.create({"s": override.value()}).s == sentence
    assert args[1] == "sentence=" + quote_value(sentence)


def test_which_argument_is_the_sentence() -> None:
    """No '=', or whitespace before a '=' that does not follow a config key: the sentence."""
    kept = ["dim=10", "mask=causal", "out=my figures", "ckpt_path=/a b/c.ckpt", "+e=1"]
    kept += ["positional.grid=4", "hydra.run.dir=runs/a b", "hydra/launcher=basic", "paths=default"]
    assert hydra_arguments(kept) == kept  # overrides, left to Hydra
    for sentence in ("E=mc2 is famous", "x = 1 is a sentence", "Hello", "dim = 10"):
        assert hydra_arguments([sentence, "dim=4"]) == [f"sentence='{sentence}'", "dim=4"]
    assert hydra_arguments(["-m", "a b", "dim=4,6"]) == ["-m", "sentence='a b'", "dim=4,6"]
    assert hydra_arguments(["--cfg", "job", "job"]) == ["--cfg", "job", "sentence='job'"]
    assert hydra_arguments(["--cfg", "job"]) == ["--cfg", "job"]  # a flag's value is not one
    assert hydra_arguments(["-sc", "query=bash"]) == ["-sc", "query=bash"]  # tab completion
    assert hydra_arguments(["sentence=Hello, world"]) == ["sentence='Hello, world'"]
    assert hydra_arguments(["sentence='kept'"]) == ["sentence='kept'"]
    with pytest.raises(UserError, match="given twice"):
        hydra_arguments(["hello", "sentence=world"])
    with pytest.raises(UserError, match=r"E=mc2 sets E, which is not a key .* sentence='E=mc2'\."):
        hydra_arguments(["E=mc2"])  # a one-word sentence with '=': sentence=E=mc2
    assert hydra_arguments(["sentence=E=mc2"]) == ["sentence='E=mc2'"]
    with pytest.raises(
        UserError, match=r'in quotes as one argument, e\.g\. cvexp-attention "This is"'
    ):
        hydra_arguments(["This", "is", "dk=2"])


def test_console_script_prints_the_steps_and_writes_the_figures(tmp_path: Path) -> None:
    result = run_attention(LECTURE, "dim=10", "dk=2", "mask=causal", "out=figs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    labels = [
        "vocabulary: word -> integer",
        "one-hot matrix",
        "embedding matrix E",
        "one-hot x E = word vectors X  (5 x 10)",
        "positional encoding P",
        "X + P  (5 x 10)",
        "W_Q  (10 x 2)",
        "W_K  (10 x 2)",
        "W_V  (10 x 2)",
        "Q = (X + P) W_Q  (5 x 2)",
        "K = (X + P) W_K  (5 x 2)",
        "V = (X + P) W_V  (5 x 2)",
        "alignment scores Q K^T",
        "scaled scores Q K^T / sqrt(d_k), sqrt(2) = 1.41",
        "masked scores: -inf above the diagonal",
        "softmax weights",
        "output = weights x V  (5 x 2)",
    ]
    positions = [out.index(label) for label in labels]
    assert positions == sorted(positions), out
    assert "Computer -> 2" in out and "-inf" in out
    steps = worked_attention(LECTURE, dim=10, dk=2, mask="causal", seed=0)  # the default seed
    assert report(steps) in out  # the printed numbers are the functions' numbers
    for name in ("attention", "positional_encoding", "position_similarity_sinusoidal"):
        png = tmp_path / "figs" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_console_script_takes_sentence_as_a_key(tmp_path: Path) -> None:
    tricky = "Don't panic, it's = fine ${x}"
    result = run_attention(f"sentence={tricky}", "dim=6", "heads=2", "seed=5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f'on "{tricky}"' in result.stdout and "[head 2/2]" in result.stdout
    assert "concatenated heads [out_1 ... out_h]  (6 x 6)" in result.stdout
    assert list(tmp_path.glob("outputs/attention/*/*/attention.png"))  # out=null: the run dir


def test_a_sentence_with_equals_and_spaces_is_the_sentence(tmp_path: Path) -> None:
    """Issue 26: "E=mc2 is famous" was taken for an override of a key E, and refused."""
    result = run_attention("E=mc2 is famous", "dim=4", "out=figs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'on "E=mc2 is famous"' in result.stdout and "E=mc2 -> 0" in result.stdout
    assert (tmp_path / "figs" / "attention.png").is_file()


def test_a_folder_that_holds_figures_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """Issue 26: out=DIR overwrote the figures already in DIR."""
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "attention.png").write_bytes(b"the lecturer's own figure")
    (figs / "notes.txt").write_text("kept")
    before = {p.name: p.read_bytes() for p in figs.iterdir()}
    result = run_attention(LECTURE, "dim=10", "dk=2", "mask=causal", "out=figs", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "figs already holds figures (attention.png)" in result.stderr
    assert "pass another folder, e.g. out=figs-1." in result.stderr
    assert "Self-attention" not in result.stdout  # refused before anything is printed
    assert {p.name: p.read_bytes() for p in figs.iterdir()} == before
    assert not (tmp_path / "figs-1").exists()


def test_the_library_refuses_a_folder_with_figures_and_names_a_free_one(tmp_path: Path) -> None:
    for folder in ("figs", "figs-1"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "loss.png").write_bytes(b"png")
    with pytest.raises(UserError, match=r"pass another folder, e\.g\. out=.*figs-2\."):
        attention_example(LECTURE, out=tmp_path / "figs")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        attention_example(LECTURE, out=tmp_path / "file")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("no figures here")
    result = attention_example(LECTURE, out=tmp_path / "data", dim=4)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "attention.png",
        "notes.txt",
        "position_similarity_sinusoidal.png",
        "positional_encoding.png",
    ]
    assert result["report"] == report(result["steps"])


def test_help_starts_without_torch(tmp_path: Path) -> None:
    """The command's module imports torch only when it runs the example."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr))\n"
        "sys.argv = ['cvexp-attention', '--help']\n"
        "from cvexp.cli.attention import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cvexp-attention: ") and result.stderr.strip() == "False"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["", "out=x"], "sentence is empty"),
        (["hello", "sentence=world"], "given twice"),
        (["This", "is", "dk=2"], 'e.g. cvexp-attention "This is"'),
        (["heads=2", "mask=causal", "head=2"], "head=2 sets head, which is not a key"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = run_attention(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["dk=0"], "dk=0"),
        (["heads=3"], "heads=3 does not divide dim=10"),
        (["mask=foo"], "mask='foo'"),
        (["dim=ten"], "dim='ten'"),
        (["seed=abc"], "seed='abc'"),
        (["positional.grid=0"], "positional.grid=0"),
    ],
)
def test_bad_options_are_user_errors(tmp_path: Path, overrides: list[str], fragment: str) -> None:
    cfg = compose_config("attention", [*overrides, "out=x"], tmp_path)
    with pytest.raises(UserError, match=fragment):
        example_from_config(cfg)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def test_figure_functions_return_figures() -> None:
    for steps in (
        worked_attention(LECTURE, dim=10, dk=2, mask="causal"),
        worked_attention(LECTURE, dim=8, num_heads=2),
    ):
        fig = worked_attention_figure(steps)
        assert isinstance(fig, plt.Figure)
        labels = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
        assert {"This", "Class", "0 This"} <= labels
        plt.close(fig)
    for fig in (
        sinusoidal_encoding_figure(64, 128),
        position_similarity_figure(sinusoidal_patch_table(8, 128), 8, title="sinusoidal"),
    ):
        assert isinstance(fig, plt.Figure)
        plt.close(fig)


def test_similarity_of_the_sinusoidal_table() -> None:
    table = sinusoidal_patch_table(8, 128)
    assert table.shape == (64, 128) and torch.equal(table, sinusoidal_table(65, 128)[1:])
    sim = cosine_similarity_matrix(table)
    assert sim.shape == (64, 64) and torch.allclose(sim.diagonal(), torch.ones(64))
    assert torch.allclose(sim, sim.T)
    a, b = table[3].tolist(), table[40].tolist()
    by_hand = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )
    assert math.isclose(sim[3, 40], by_hand, rel_tol=1e-5)


def test_patch_position_embeddings_of_the_vits() -> None:
    for kind in ("sinusoidal", "learned"):
        net = VisionTransformer(**TINY_VIT, pos_embed=kind)
        table, grid = patch_position_embeddings(net)
        assert grid == 8 and torch.equal(table, net.pos_embed[0, 1:].detach())  # no class token
    assert patch_position_embeddings(VisionTransformer(**TINY_VIT, pos_embed="none")) is None
    with pytest.raises(TypeError):
        patch_position_embeddings(torch.nn.Linear(2, 2))


def test_patch_position_embeddings_of_a_timm_vit() -> None:
    """timm's attribute names (pos_embed with prefix tokens, patch_embed.grid_size), without timm."""
    timm_vit = torch.nn.Module()
    timm_vit.pos_embed = torch.nn.Parameter(torch.randn(1, 1 + 16, 8))
    timm_vit.patch_embed = torch.nn.Module()
    timm_vit.patch_embed.grid_size = (4, 4)
    timm_vit.num_prefix_tokens, timm_vit.no_embed_class = 1, False
    wrapper = torch.nn.Module()
    wrapper.model = timm_vit
    table, grid = patch_position_embeddings(wrapper)
    assert grid == 4 and torch.equal(table, timm_vit.pos_embed[0, 1:].detach())


def save_tiny_checkpoint(path: Path, net: torch.nn.Module, net_config: dict) -> Path:
    """A checkpoint as cvexp-train writes it, for a tiny net."""
    classifier = ImageClassifier(net=net)
    classifier.net_config = net_config
    torch.save(
        {"state_dict": classifier.state_dict(), "net_config": net_config, "hyper_parameters": {}},
        path,
    )
    return path


def test_position_similarity_of_a_checkpoint(tmp_path: Path, capsys) -> None:
    target = "cvexp.models.vit.VisionTransformer"
    torch.manual_seed(0)
    vit = VisionTransformer(**TINY_VIT, pos_embed="learned")
    learned = save_tiny_checkpoint(
        tmp_path / "vit.ckpt", vit, {"_target_": target, **TINY_VIT, "pos_embed": "learned"}
    )
    table, grid = checkpoint_positions(str(learned), trust=False)
    assert grid == 8 and torch.equal(table, vit.pos_embed[0, 1:].detach())  # patches only
    overrides = ["sentence='Hi there'", "dim=4", f"ckpt_path={learned}", f"out={tmp_path / 'figs'}"]
    paths = example_from_config(compose_config("attention", overrides, tmp_path))["paths"]
    assert (
        paths["similarity_checkpoint"] == tmp_path / "figs" / "position_similarity_checkpoint.png"
    )
    assert paths["similarity_checkpoint"].is_file()

    none = save_tiny_checkpoint(
        tmp_path / "none.ckpt",
        VisionTransformer(**TINY_VIT, pos_embed="none"),
        {"_target_": target, **TINY_VIT, "pos_embed": "none"},
    )
    assert checkpoint_positions(str(none), trust=False) is None
    assert "no positional embedding (pos_embed=none)" in capsys.readouterr().out

    linear = save_tiny_checkpoint(
        tmp_path / "linear.ckpt",
        torch.nn.Linear(4, 10),
        {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 10},
    )
    with pytest.raises(UserError, match="holds a Linear, not a Vision Transformer") as error:
        checkpoint_positions(str(linear), trust=False)
    assert "model=vit" in str(error.value)


# ---------------------------------------------------------------------------------------------
# The ViT pipeline figure
# ---------------------------------------------------------------------------------------------


def test_vit_pipeline_figure() -> None:
    torch.manual_seed(0)
    net = VisionTransformer(**TINY_VIT).eval()
    image = torch.rand(3, 32, 32)
    flat, embedded = patch_vectors(net, image)
    assert flat.shape == (64, 48) and embedded.shape == (64, 32)
    normalised = net.normalize(image[None])[0]  # (3, 32, 32)
    r, c = divmod(9, 8)
    assert torch.allclose(flat[9], normalised[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(-1))
    with torch.no_grad():
        tokens = net.patch_embed(normalised[None])[0]
    assert torch.allclose(embedded, tokens)
    fig = vit_pipeline_figure(net, image, "a random image")
    assert isinstance(fig, plt.Figure) and fig.get_suptitle() == "a random image"
    plt.close(fig)


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a Markdown page."""
    blocks, current = [], None
    for line in markdown.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_the_docs_page_shows_what_the_command_prints() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    page = (docs / "attention_example.md").read_text()
    printed = report(worked_attention(LECTURE, dim=10, dk=2, mask="causal", seed=0))
    starts = ("1. vocabulary", "5. positional", "15. masked")
    full = [b for b in code_blocks(page) if b.startswith(starts)]
    assert len(full) == len(starts)
    for block in full:
        assert block in printed, block
    for name in ("attention", "positional_encoding", "position_similarity_sinusoidal"):
        png = docs / "attention_example" / f"{name}.png"
        assert png.is_file() and png.stat().st_size < 300_000, name
