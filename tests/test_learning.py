"""The default recipe learns: a few epochs on one fixed split of the demo corpus beat the TF-IDF baseline on the same
test posts, and the fine-tuned epochs beat the linear probe they start from on dev. Every end-to-end test runs the
smoke profile, whose numbers mean nothing; this one fails when learning breaks (e.g. `train.lr=0 train.head_lr=0`)."""
import os
from conftest import ROOT
from criteria_cls.config import load_params
from criteria_cls.data import load_table
from criteria_cls.metrics import binary_metrics, tfidf_baseline
from criteria_cls.splits import fold_pairs, folds_from_params
from criteria_cls.train import train_fold

EPOCHS = 2
# `CRITERIA_CLS_LEARNING_OVERRIDES="train.lr=0 train.head_lr=0"` shows the test failing when nothing learns
EXTRA = os.environ.get('CRITERIA_CLS_LEARNING_OVERRIDES', '').split()


def test_default_recipe_beats_tfidf_and_its_probe():
    p = load_params(ROOT / 'params' / 'default.yaml', [f'train.epochs={EPOCHS}', f'train.patience={EPOCHS}', *EXTRA])
    t = load_table(p)
    doc = folds_from_params(t, p)
    parts = fold_pairs(t, doc, 0)
    r = train_fold(p, parts['train'], parts['dev'], parts['test'], criteria=t.criteria, progress=False,
                   sentences=t.sentences)
    test = r.test_predictions
    ours = binary_metrics(test.label, test.prob, r.threshold)
    base = tfidf_baseline(t, [doc['folds'][0]], p.metrics.threshold_step, metric=p.metrics.select)
    tfidf = binary_metrics(base.label, base.prob, base.threshold.to_numpy())
    print(f"fold 0 test: ours ROC-AUC {ours['roc_auc']:.3f} F1 {ours['f1']:.3f}; TF-IDF ROC-AUC "
          f"{tfidf['roc_auc']:.3f} F1 {tfidf['f1']:.3f}; dev ROC-AUC by epoch {[h['dev_roc_auc'] for h in r.history]}")
    assert len(base) == len(test)                                       # the same test pairs
    assert ours['roc_auc'] > tfidf['roc_auc'] and ours['f1'] > tfidf['f1'], (ours, tfidf)
    probe, tuned = r.history[0], r.history[1:]
    assert probe['epoch'] == 0 and len(tuned) == EPOCHS
    assert r.best_epoch >= 1, 'fine-tuning never beat the linear probe on dev'
    assert max(h['dev_roc_auc'] for h in tuned) > probe['dev_roc_auc']
