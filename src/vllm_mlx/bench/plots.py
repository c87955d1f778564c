"""PNG plots of a `bench serve` result: throughput and latency against concurrency."""

from __future__ import annotations

from pathlib import Path

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _series(result: dict, name: str, key: str):
    conc = result["servers"][name]["concurrency"]
    xs = [int(c) for c in conc]
    med = [conc[c]["summary"][key]["median"] for c in conc]
    err = [[m - conc[c]["summary"][key]["low"] for c, m in zip(conc, med)],
           [conc[c]["summary"][key]["high"] - m for c, m in zip(conc, med)]]
    return xs, med, err


class PlotsUnavailable(RuntimeError):
    """matplotlib (the ``bench`` extra) is not installed."""


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        from ..extras import install_hint

        raise PlotsUnavailable("matplotlib is not installed; the plots need the 'bench' extra: "
                               f"{install_hint('bench')} (or pass --no-plots)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for color, name in zip(COLORS, result["names"]):
        for axis, key, label in ((ax[0], "output_tok_per_s", "output tokens/s"), (ax[1], "req_per_s", "requests/s")):
            xs, med, err = _series(result, name, key)
            axis.errorbar(xs, med, yerr=err, marker="o", capsize=3, color=color, label=name)
            axis.set_xlabel("concurrency")
            axis.set_ylabel(label)
    ax[0].set_title("throughput (median, 95% CI)")
    ax[0].legend()
    ax[1].legend()
    fig.tight_layout()
    paths.append(out_dir / "throughput.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    styles = {"p50": "-", "p95": "--", "p99": ":"}
    for color, name in zip(COLORS, result["names"]):
        for axis, keys, title in ((ax[0], ("ttft_p50", "ttft_p95"), "TTFT ms"),
                                  (ax[1], ("itl_p50", "itl_p95", "itl_p99"), "inter-chunk latency ms"),
                                  (ax[2], ("tpot_p50", "tpot_p95"), "TPOT ms")):
            for key in keys:
                pct = key.split("_")[1]
                xs, med, err = _series(result, name, key)
                axis.errorbar(xs, med, yerr=err, marker="o", capsize=3, color=color, linestyle=styles[pct],
                              label=f"{name} {pct}")
            axis.set_title(f"{title} (median, 95% CI)")
            axis.set_xlabel("concurrency")
            axis.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "latency.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
