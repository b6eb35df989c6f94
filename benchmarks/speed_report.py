"""The speed benchmark's printed table."""

from __future__ import annotations


def format_table(r: dict) -> str:
    """The benchmark as a markdown table."""
    rows = [
        (
            "training images/s (median of epochs)",
            f"{r['reference_train_images_per_s']:,.0f}",
            f"{r['project_train_images_per_s']:,.0f}",
        ),
        ("speed-up (ratio of the medians)", "1.00x", f"{r['speedup']:.2f}x"),
        (
            "speed-up epoch by epoch",
            "",
            " ".join(f"{x:.2f}x" for x in r["epoch_speedups"]),
        ),
        ("precision", f"fp32 on {r.get('device', 'cpu')}", f"{r['project_precision']} on {r['project_device']}"),
        (
            "freed memory kept for reuse (glibc)",
            "yes" if r["reference_retains_freed_memory"] else "no (glibc defaults)",
            "yes",
        ),
        ("peak resident memory, MiB", f"{r['reference_peak_rss_mb']:,.0f}", f"{r['project_peak_rss_mb']:,.0f}"),
        (
            f"validation MSE after {r['epochs']} epochs",
            f"{r['reference_val_loss']:.5f}",
            f"{r['project_val_loss']:.5f}",
        ),
        ("digit-9 ROC-AUC (per-image MSE)", f"{r['reference_roc_auc']:.3f}", f"{r['project_roc_auc']:.3f}"),
        ("scoring images/s: reconstructions and maps (03/04 path)", "", f"{r['scoring_images_per_s']:,.0f}"),
        (
            "scoring images/s: the default score's whole path (+ latents, kNN)",
            "",
            f"{r['default_score_images_per_s']:,.0f}" if "default_score_images_per_s" in r else "not measured",
        ),
        (
            "the same, exported to ONNX, in onnxruntime (CPU)",
            "",
            f"{r['onnxruntime_images_per_s']:,.0f}" if r.get("onnxruntime_images_per_s") else "not measured",
        ),
        (f"t-SNE of {r['tsne_points']:,} latents, s", "", f"{r['tsne_seconds']:.1f}"),
    ]
    step = r.get("step_breakdown")
    if step:
        bound = step["gemm_bound_images_per_s"]
        rows += [
            (
                f"one training step of {step['batch_size']}, ms: whole / convs + matrix products / pooling",
                "",
                f"{step['step_ms']:.1f} / {step['gemm_ms']:.1f} / {step['pool_ms']:.1f}",
            ),
            (
                "bound if all but convs + matrix products were free",
                "",
                f"{bound:,.0f} images/s ({bound / r['reference_train_images_per_s']:.2f}x)",
            ),
        ]
    cpu = r.get("cpu")
    if cpu:
        flags = ", ".join(f"{name} {'yes' if cpu.get(name) else 'no'}" for name in ("avx512", "bf16", "amx"))
        rows.insert(0, ("CPU", "", f"{cpu['model']}, {cpu['cores']} cores ({flags})"))
    if r.get("image_size", 28) != 28 or r.get("channels", 1) != 1:
        shape = f"{r['channels']}x{r['image_size']}x{r['image_size']} (MNIST scaled up), {r['train_images']:,} training images"
        rows.insert(1, ("images", shape, shape))
    lines = ["| | reference loop | AnomalyMap |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
