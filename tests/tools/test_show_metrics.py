"""tools/show_metrics.py shows the top-k column the run logged (val_top{eval.topk}), not a fixed val_top3."""
from show_metrics import format_table


def test_topk_column_follows_the_run():
    records = [{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_top1": 0.5, "val_top5": 0.875, "val_auc_macro": 0.7,
                "val_f1_macro": 0.4, "images_per_s": 10.0}]
    header, row = format_table(records).splitlines()
    assert "val_top5" in header and "val_top3" not in header
    assert "0.8750" in row and "nan" not in row
