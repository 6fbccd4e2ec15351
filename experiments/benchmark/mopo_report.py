"""What MOPO's benchmark numbers mean (DEFINITIONS, written into its JSON) and its Markdown
(experiments/benchmark/mopo.py measures them)."""

from __future__ import annotations

import statistics

DEFINITIONS = {
    "dynamics.updates_per_second": (
        "Ensemble updates (one Adam step of all members, each on its own batch of batch_size rows) per "
        "second: train_stage on the dataset, chunks of validate_every updates (the stage's own "
        "schedule: each chunk ends with a validation call, a no-op until an epoch ends); the median "
        "over `chunks` chunks after one that compiles."),
    "dynamics.epoch": (
        "ceil(training rows / batch_size) updates: one pass over the training split (the dataset "
        "less min(holdout x rows, max_holdout) rows), the unit of the early stop's patience."),
    "dynamics.extrapolated_seconds": (
        "epochs x updates per epoch / updates_per_second, for each of settings.epochs: not run. "
        "Validations at the epochs' ends (on at most max_holdout rows) are not included; they cost "
        "about one update's forward pass each."),
    "agent.updates_per_second_per_seed": (
        "rollout_freq / the median seconds of a ChunkRunner call of rollout_freq updates (each "
        "holds exactly one rollout refresh, inside the compiled scan), after one warm-up call: the "
        "rate of a real run, whose chunks are as long (log_every 1000)."),
    "agent.refresh_seconds": (
        "One rollout refresh of every seed (MOPO.refresh vmapped over seeds, jitted, the buffers "
        "donated): start states drawn, rollout_length model steps through all members with the "
        "current policy, written into the buffers; median over `repeats` calls."),
    "agent.update_only_per_second_per_seed": (
        "Derived: rollout_freq / (chunk seconds - refresh seconds): the updates without rollouts."),
    "flops": (
        "XLA's cost_analysis()['flops']. The chunk's program counts its scan body once and a "
        "lax.cond as its costlier branch: one update plus one refresh, for all seeds, the "
        "refresh's own scan over rollout_length counted once too (refresh_flops_xla, per seed). "
        "update_flops = (chunk program - refresh program) / seeds. refresh_flops: counted from the "
        "network sizes, rollout_batch x rollout_length x 2 x (the actor's kernel sizes + every "
        "member's), matmuls only. flops_per_update (amortised) = update_flops + refresh_flops / "
        "rollout_freq. The dynamics' flops_per_update is XLA's count of its stage update."),
    "roofline_fraction": (
        "achieved FLOP/s (flops x measured rate) / the peak float32 matmul FLOP/s: the best rate of "
        "jitted chains of n x n matmuls (n >= 256), measured at the start and the end of the run."),
    "load_average": "1, 5 and 15 minute load averages before and after each measurement.",
    "cpu_share": (
        "The process's CPU seconds (time.process_time, all its threads) / wall seconds / cores "
        "available, over the measurement (compilation included): the part of the cores it had. "
        "Absent from rows measured before it was added."),
}


def markdown(report: dict) -> str:
    meta, settings, algo = report["meta"], report["settings"], report["settings"].get("algorithm", {})
    lines = [
        f"Measured {meta['date'][:10]} on {meta['cpu_model']} ({meta['cores_available']} cores), JAX "
        f"{meta['jax']} on {', '.join(meta['devices'])}; {settings['dataset_size']:,} synthetic "
        f"transitions of HalfCheetah's shapes; load average {meta['load_average_start']} at the start, "
        f"{meta.get('load_average_end', '?')} at the end (a shared machine). "
        f"`python -m experiments.benchmark.mopo {' '.join(meta['argv'])}`. Matmul peak "
        f"{report['matmul']['peak_gflops']:.1f} GFLOP/s float32.",
    ]
    d = report["dynamics"]
    if d:
        extrapolated = ", ".join(f"{epochs} epochs {seconds / 60:.0f} min"
                                 for epochs, seconds in d["extrapolated_seconds"].items())
        lines += ["", f"Dynamics ensemble ({d['members']} members, {d['elites']} elites, "
                  f"{'x'.join(map(str, d['hidden']))}, batch {d['batch_size_per_member']} per member), "
                  f"{d['dataset_rows'] - d['holdout_rows']:,} training rows = "
                  f"{d['updates_per_epoch']:,} updates per epoch: {d['updates_per_second']:.1f} "
                  f"updates/s ({_number(d['flops_per_update'], 1e9, '.2f')} GFLOP each, "
                  f"{_percent(d.get('roofline_fraction'))} of the matmul peak), "
                  f"{d['seconds_per_1000_updates']:.1f} s per 1000 updates, "
                  f"{d['seconds_per_epoch'] / 60:.1f} min per epoch; extrapolated (not run): "
                  f"{extrapolated}. Compile {d['compile']['total_seconds']:.1f} s; load average "
                  f"{d['load_average']['before'][0]} / {d['load_average']['after'][0]}, CPU share "
                  f"{_percent(d.get('cpu_share'))}."]
    lines += ["", f"MOPO (SAC {algo.get('hidden_dims')}, batch {algo.get('batch_size')}; every "
              f"{algo.get('rollout_freq')} updates {algo.get('rollout_batch'):,} rollouts of "
              f"{algo.get('rollout_length')} steps):", "",
              "| seeds | updates/s per seed | total | s per chunk | one refresh s (all seeds) "
              "| refresh share | update-only /s per seed | GFLOP/update | of matmul peak "
              "| GFLOP/refresh/seed | refresh of peak | compile s | peak RSS MiB | load before/after "
              "| CPU share |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in report["agent"]:
        lines.append(
            f"| {r['seeds']} | {r['updates_per_second_per_seed']:,.1f} "
            f"| {r['updates_per_second_total']:,.1f} "
            f"| {statistics.median(r['chunk_seconds']):.1f} | {r['refresh_seconds_median']:.2f} "
            f"| {_percent(r['refresh_share_of_chunk'])} "
            f"| {_number(r['update_only_per_second_per_seed'], 1, ',.1f')} "
            f"| {_number(r['flops_per_update'], 1e9, '.3f')} | {_percent(r.get('roofline_fraction'))} "
            f"| {_number(r['refresh_flops'], 1e9, ',.0f')} | {_percent(r.get('refresh_roofline_fraction'))} "
            f"| {r['compile']['chunk_seconds']:.1f} | {r['peak_rss_bytes'] / 2**20:,.0f} "
            f"| {r['load_average']['before'][0]} / {r['load_average']['after'][0]} "
            f"| {_percent(r.get('cpu_share'))} |")
    lines += ["", "Updates/s: chunks of rollout_freq updates, each with one refresh (amortised); "
              "definitions in the JSON."]
    return "\n".join(lines) + "\n"


def _number(value, scale: float, spec: str) -> str:
    return "–" if value is None else format(value / scale, spec)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"
