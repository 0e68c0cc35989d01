"""The validation report's discriminator on more customers, with its spread, and what gives synthetic away.

    python benchmarks/discriminator_spread.py --world runs/bench/world --model runs/bench/model \\
        [--users 2000] [--draws 4] [--synthetic DIR]

The report compares synthetic customers with the 488 holdout customers, so one model's AUC moves by about
+/-0.01 from draw to draw. Here the same classifier on the same whole-customer profiles
(``models/validation/features.py``) compares ``--users`` synthetic customers (generated as
``validation_report.py`` does, or read from ``--synthetic``) with as many training customers, ``--draws``
times: each draw takes other training customers and other classifier folds. Prints each draw's AUC,
their mean and standard deviation, then the profile features that tell most on their own (AUC of that
feature alone, and the synthetic mean minus the real one in real standard deviations), and one JSON line.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from validation_report import generated, model_benchmark_parser, real_parts

from twinsim.models.event_log import load_event_log
from twinsim.models.validation.discriminator import discriminator_auc
from twinsim.models.validation.features import standardise, user_features
from twinsim.models.validation.samples import Sample, Vocabulary


def main() -> None:
    parser = model_benchmark_parser(__doc__, users=2_000)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--top", type=int, default=12, help="features to list")
    args = parser.parse_args()

    train, _, _, _ = real_parts(args.world, args.model)
    synthetic = load_event_log(args.synthetic) if args.synthetic else generated(args.model, args.users)
    vocab = Vocabulary.from_train(train)
    real_all = Sample.from_log("train", train)
    fake = user_features(Sample.from_log("synthetic", synthetic), vocab)
    reference = user_features(real_all, vocab)
    aucs, first = [], None
    for draw in range(args.draws):
        real = user_features(real_all.sample_users(min(args.users, real_all.n_users), np.random.default_rng(draw)),
                             vocab)
        z_real, z_fake = standardise([real, fake], reference)
        aucs.append(discriminator_auc(z_real, z_fake, draw))
        print(f"draw {draw}: AUC {aucs[-1]:.3f}", flush=True)
        first = first or (real, z_real, z_fake)
    print(f"discriminator AUC, {len(fake)} synthetic vs {len(first[0])} training customers: "
          f"{np.mean(aucs):.3f} +/- {np.std(aucs, ddof=1) if len(aucs) > 1 else 0.0:.3f}")

    real, z_real, z_fake = first
    labels = np.r_[np.zeros(len(z_real)), np.ones(len(z_fake))]
    alone = [abs(roc_auc_score(labels, np.r_[z_real[:, i], z_fake[:, i]]) - 0.5) + 0.5
             for i in range(len(real.columns))]
    tells = pd.DataFrame({"auc_alone": alone, "shift_sd": z_fake.mean(0) - z_real.mean(0)}, index=real.columns)
    print(tells.sort_values("auc_alone", ascending=False).head(args.top).round(3).to_string())
    print(json.dumps({"benchmark": "discriminator_spread", "model": str(args.model), "users": len(fake),
                      "aucs": [round(a, 4) for a in aucs], "mean": float(np.mean(aucs))}))


if __name__ == "__main__":
    main()
