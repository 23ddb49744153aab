"""sdlab-report: figures and tables from a real sweep, byte-stable, and the committed reports."""

import json
import re
from pathlib import Path

import matplotlib
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from sdlab import samplers, schedules
from sdlab.cli import CONFIG_DIR
from sdlab.experiment import run
from sdlab.models.gmm import build as build_gmm
from sdlab.report import build, main, plots
from sdlab.report import style as st
from sdlab.report.data import commands, load
from sdlab.report.plots import pareto_front
from sdlab.tracking import TrajectoryRecorder

ROOT = Path(__file__).resolve().parent.parent
OWN_STUDIES = ("schedule_ablation", "sampler_shootout", "steps_vs_quality", "guidance_tradeoff")
STUDIES = [s for s in OWN_STUDIES if (ROOT / "reports" / s / "report.md").is_file()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real 2-sampler x 3-point sweep of a 1-channel 4x4 mixture (so grid.png exists)."""
    root = tmp_path_factory.mktemp("sweep")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        # euler at 3 steps and heun at 2 make a block of equal nfe (3)
        for sampler, steps_list in (("euler", (3, 4, 8)), ("heun", (2, 4, 8))):
            for steps in steps_list:
                cfg = compose("config", overrides=[
                    f"results_root={root}", "logger=none", "n_images=4", "model=gmm",
                    "metrics=gmm", "prompts=none", "model.shape=[1,4,4]",
                    "model.components=2",
                    f"sampler={sampler}", f"steps={steps}", "name=report_test"])
                job = root / f"sampler={sampler},steps={steps}"
                job.mkdir()
                assert run(cfg, job)["status"] == "ok"
    # a kept trajectory for one point, through the documented file convention
    model = build_gmm(shape=(1, 4, 4), components=2, seed=0)
    d = model.denoiser()
    sigmas = schedules.build("karras", 4, sigma_min=d.sigma_min, sigma_max=d.sigma_max)
    recorder = TrajectoryRecorder()
    samplers.get("euler")(d, d.sigma_max * model.gmm.sample(2, None), sigmas,
                          callback=recorder)
    recorder.save(root / "sampler=euler,steps=4" / "trajectory.pt", decode=lambda x: x.sigmoid())
    return root


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    build(sweep, out)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_report_files_decode_and_are_byte_stable(sweep, report, tmp_path):
    main([str(sweep), "--out", str(tmp_path)])
    a, b = files(report), files(tmp_path)
    assert a == b
    for stem in ("convergence_rmse_ode", "nfe_fd_exact", "nfe_mmd_exact", "grid",
                 "trajectory_steps4"):
        assert f"figures/{stem}.pdf" in a and f"figures/{stem}.png" in a
    for name in a:
        if name.endswith(".png"):
            with Image.open(report / name) as img:
                img.load()
                assert img.width >= 600  # 300 dpi at >= 2 inches
        if name.endswith(".pdf"):
            assert b"CreationDate" not in a[name]
    assert not any(n.startswith("figures/guidance") or n.startswith("figures/tradeoff")
                   for n in a)  # one guidance value: no guidance figure
    report = a["report.md"].decode()
    for stem in ("convergence_rmse_ode", "grid", "trajectory_steps4"):
        assert f"figures/{stem}.png" in report


NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"


def parse_markdown(text: str) -> list[dict[str, str]]:
    lines = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    head = [h.strip().split(" ")[0] for h in lines[0]]
    return [dict(zip(head, (c.strip() for c in row), strict=True)) for row in lines[2:]]


def parse_latex(text: str) -> list[dict[str, str]]:
    body = text.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    lines = [ln.removesuffix(r" \\").split(" & ") for ln in body.strip().splitlines()
             if ln.strip() != r"\midrule"]
    head = [h.split(" ")[0].replace(r"\_", "_") for h in
            text.split(r"\toprule")[1].split(r"\midrule")[0].strip().removesuffix(r" \\")
            .split(" & ")]
    return [dict(zip(head, row, strict=True)) for row in lines]


def numbers(cell: str) -> list[float]:
    """The value and the +- half-width in a table cell, in either format."""
    cell = re.sub(r"\\times10\^\{(-?\d+)\}", r"e\1", cell)
    return [float(x) for x in re.findall(NUMBER, cell.replace(r"\mathbf", ""))]


@pytest.mark.parametrize("fmt, parse", [("md", parse_markdown), ("tex", parse_latex)])
def test_tables_parse_back_to_the_results(sweep, report, fmt, parse):
    rows = parse((report / "tables" / f"results.{fmt}").read_text())
    results = [json.loads(p.read_text()) for p in sweep.rglob("result.json")]
    assert len(rows) == len(results)
    for r in results:
        (row,) = [w for w in rows if w["sampler"] == r["sampler"] and int(w["steps"]) ==
                  r["steps"]]
        assert float(row["nfe"]) == r["nfe"]
        for name, value in r["metrics"].items():
            got, half = numbers(row[name])
            lo, hi = r["metrics_ci"][name]
            assert got == pytest.approx(value, rel=5e-3, abs=1e-12)
            assert half == pytest.approx((hi - lo) / 2, rel=5e-2)
    # bold marks the best value in each block of equal nfe: only euler 3 vs heun 2 (nfe 3)
    bold = "**" if fmt == "md" else r"\mathbf"
    by_point = {(r["sampler"], r["steps"]): r for r in results}
    for name in results[0]["metrics"]:
        marked = [(w["sampler"], int(w["steps"])) for w in rows if bold in w[name]]
        pair = [("euler", 3), ("heun", 2)]
        assert marked == [min(pair, key=lambda k: by_point[k]["metrics"][name])]


def guided_copy(sweep: Path, dest: Path, budget: int | None = None) -> Path:
    """The real sweep re-labelled as a guidance sweep (scales 1..3) with a CLIP-like score."""
    for k, path in enumerate(sorted(sweep.rglob("result.json"))):
        r = json.loads(path.read_text())
        if r["steps"] != 8:
            continue
        for scale in (1.0, 2.0, 3.0):
            job = dest / f"{path.parent.name},scale={scale}"
            job.mkdir(parents=True)
            r2 = {**r, "guidance": {"name": "cfg", "scale": scale},
                  "config": {**r["config"], "nfe": budget},
                  "metrics": {"fd_exact": r["metrics"]["fd_exact"] * (1 + (scale - 2) ** 2),
                              "clip_score": 20 + 2 * scale + k},
                  "metrics_ci": {}}
            (job / "result.json").write_text(json.dumps(r2))
    return dest


def test_guidance_and_tradeoff_figures(sweep, tmp_path):
    data = guided_copy(sweep, tmp_path / "guided")
    build(data, tmp_path / "out")
    made = {p.name for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert {"guidance_fd_exact_steps8.png", "guidance_clip_score_steps8.png",
            "tradeoff_fd_exact_clip_score_steps8.png"} <= made
    assert not any(n.startswith("nfe_") for n in made)  # one nfe per series: no nfe figure


def test_points_of_an_nfe_budget_share_figures(sweep, tmp_path):
    """With an nfe budget the guidance figures group by budget, not by each sampler's steps."""
    build(guided_copy(sweep, tmp_path / "guided", budget=15), tmp_path / "out")
    made = {p.name for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert "guidance_fd_exact_nfe15.png" in made and not any("steps" in n for n in made)


def test_every_sampler_has_its_own_style():
    """Registered samplers and the bridge's schedulers: a fixed place in the table, a distinct
    (colour, marker, line style) and (colour, marker); the committed studies' samplers a
    distinct colour."""
    names = list(samplers.names())
    try:
        from sdlab.samplers.diffusers_bridge import fitting_scheduler_names
        names += fitting_scheduler_names()
    except ImportError:
        pass
    assert set(names) <= set(st.SAMPLERS)
    styles = [st.style("sampler", n) for n in st.SAMPLERS]
    assert len(set(styles)) == len(styles)
    assert len({(s.color, s.marker) for s in styles}) == len(styles)
    used = sorted({json.loads(p.read_text())["sampler"]
                   for p in (ROOT / "reports").glob("*/results/**/result.json")})
    assert len({st.style("sampler", n).color for n in used}) == len(used), used
    assert st.index("sampler", "my_own") >= len(st.SAMPLERS)  # after every table entry


@pytest.mark.parametrize("labels", [
    ["dpmpp_2m (nfe 20)", "dpmpp_2m_sde (nfe 20)", "euler (nfe 20)"],
    [f"sampler_{i} (slope \u22121.{i:02d})" for i in range(13)],
    ["a", "dpmpp_2m · eta=0.5,s_noise=1.0,solver_type=\"heun\",order=3,noise=\"brownian\""],
])
def test_legend_fits_inside_the_figure(labels):
    with st.rc():
        fig = st.figure(plots.PLOT_HEIGHT)
        ax = fig.add_subplot()
        for i, label in enumerate(labels):
            ax.plot([1, 2], [i, i + 1], label=label)
        plots._legend(fig, ax, len(labels))
        fig.draw_without_rendering()
        (legend,) = fig.legends
        box, page = legend.get_window_extent(), fig.bbox
        assert fig.get_figwidth() == st.COLUMN_WIDTH
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0
        assert ax.get_window_extent().y0 > box.y1  # below the axes, not over them


def test_pareto_front():
    xy = [(1, 5), (2, 3), (3, 4), (2, 6), (4, 4.5), (0, 0.5)]
    assert pareto_front(xy) == [5, 1, 2, 4]  # higher x and lower y are better


def test_missing_results_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("sdlab-report: error: no result.json under")


@pytest.mark.parametrize("study", STUDIES)
def test_committed_report_matches_the_code(study, tmp_path):
    """Rebuilding a committed report from its committed sweep gives the same bytes."""
    committed = ROOT / "reports" / study
    notes = ROOT / "experiments" / study / "reading.md"
    build(committed / "results", tmp_path, notes.read_text() if notes.is_file() else None)
    fresh = files(tmp_path)
    old = {k: v for k, v in files(committed).items() if not k.startswith("results/")}
    assert sorted(fresh) == sorted(old)
    same_renderer = f"matplotlib {matplotlib.__version__}".encode() in old["report.md"]
    for name, data in fresh.items():
        if name.startswith("figures/") and not same_renderer:
            continue  # another matplotlib draws other pixels; the text outputs still match
        assert data == old[name], f"{study}/{name} differs: run `make reports`"


def test_commands_rebuilt_from_hydra_files():
    shootout = ROOT / "reports" / "sampler_shootout" / "results"
    if not shootout.is_dir():
        pytest.skip("the sampler_shootout sweep is not committed")
    # every point is covered by the one multirun: one command, the README's own
    (line,) = commands(load(shootout))
    assert line.startswith("sdlab -m experiment=sampler_shootout")
    assert line in (ROOT / "experiments" / "sampler_shootout" / "README.md").read_text()


def test_trajectory_file_convention(sweep):
    traj = torch.load(sweep / "sampler=euler,steps=4" / "trajectory.pt", weights_only=True)
    assert traj["denoised"].shape == (4, 1, 4, 4) and traj["sigma"].dtype == torch.float64
    assert traj["i"].tolist() == [0, 1, 2, 3]
