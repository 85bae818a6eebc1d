"""What each metric key means, in one line: the report pages of evaluate and validate both show these."""

METRIC_MEANINGS = {
    "AP": "COCO mask AP, IoU 0.50:0.95 (maxDets above the largest instance count)",
    "AP50": "COCO mask AP at IoU 0.5", "AP75": "COCO mask AP at IoU 0.75", "AR": "COCO mask AR",
    "PQ": "panoptic quality = SQ x RQ", "SQ": "mean IoU of matched particles", "RQ": "F1 of detection",
    "DSC": "foreground Dice", "F1": "F1 of particles matched at IoU > 0.5",
    "precision": "matched / predicted", "recall": "matched / true",
    "split_rate": "true particles cut into >= 2 predictions, per true particle",
    "merge_rate": "predictions covering >= 2 true particles, per prediction",
    "ECD_bias_nm": "mean (predicted - true) equivalent circular diameter of matched particles",
    "ECD_sd_nm": "SD of that difference",
    "FeretMin_bias_nm": "mean error of the minimum Feret diameter",
    "FeretMax_bias_nm": "mean error of the maximum Feret diameter",
    "D10_rel_err": "relative error of D10 of the ECD distribution", "D50_rel_err": "relative error of the median ECD",
    "D90_rel_err": "relative error of D90", "dg_rel_err": "relative error of the log-normal geometric mean",
    "sigmag_rel_err": "relative error of the log-normal geometric SD", "W1_nm": "Wasserstein-1 distance of the PSDs",
    "KS": "Kolmogorov-Smirnov statistic of the PSDs",
    "FeretMin_sd_nm": "SD of the minimum Feret error", "FeretMax_sd_nm": "SD of the maximum Feret error",
    "D50_true_nm": "median ECD, true particles", "D50_pred_nm": "median ECD, predictions",
    "dg_true_nm": "log-normal geometric mean, true", "dg_pred_nm": "log-normal geometric mean, predicted",
    "sigmag_true": "log-normal geometric SD, true", "sigmag_pred": "log-normal geometric SD, predicted",
    "ECD_rel_bias": "mean relative ECD error of matched pairs, (pred - true) / true",
}  # fmt: skip
