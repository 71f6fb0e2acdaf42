"StopAfter on real Learners: exact stopping points, every after_fit run, counting across fits."
import pytest
import fastai.callback.schedule  # Learner.lr_find
from fastai.callback.core import Callback
from tsai_cbs.testing import synth_learner
from tsai_cbs.stop_after import StopAfter

class Events(Callback):
    "Counts the events the other callbacks see"
    order = 90  # before StopAfter (100), like every usual callback: it sees the last batch's after_batch
    def before_fit(self): self.seen = dict(train_batches=0, valid_epochs=0, after_fit=0, cancel_fit=0)
    def after_batch(self):
        if self.training: self.seen['train_batches'] += 1
    def after_validate(self): self.seen['valid_epochs'] += 1
    def after_cancel_fit(self): self.seen['cancel_fit'] += 1
    def after_fit(self): self.seen['after_fit'] += 1

def _fit(learn, *args, **kwargs):
    with learn.no_bar(), learn.no_logging(): learn.fit(*args, **kwargs)

@pytest.mark.parametrize('max_batches,n_values', [(1, 0), (10, 1), (16, 2), (17, 2)])
def test_max_batches(in_tmp, max_batches, n_values):
    ev = Events()
    learn = synth_learner(cbs=[StopAfter(max_batches=max_batches), ev])  # 8 training batches per epoch
    _fit(learn, 5)
    assert learn.train_iter == max_batches == ev.seen['train_batches'] == len(learn.recorder.losses)
    # a limit on an epoch boundary completes that epoch (validation + record); otherwise the partial epoch is not recorded
    assert len(learn.recorder.values) == n_values == ev.seen['valid_epochs']
    assert all(len(v) == 2 for v in learn.recorder.values)
    assert ev.seen['after_fit'] == 1 and ev.seen['cancel_fit'] == 1

def test_max_epochs_and_first_limit_wins(in_tmp):
    ev = Events()
    learn = synth_learner(cbs=[StopAfter(max_epochs=2), ev])
    _fit(learn, 4)
    assert len(learn.recorder.values) == 2 and ev.seen['train_batches'] == 16 and ev.seen['after_fit'] == 1
    learn = synth_learner(cbs=[StopAfter(max_batches=100, max_epochs=3), ev])
    _fit(learn, 5)
    assert ev.seen['train_batches'] == 24
    learn = synth_learner(cbs=[StopAfter(max_batches=12, max_epochs=3), ev])
    _fit(learn, 5)
    assert ev.seen['train_batches'] == 12

def test_limit_not_reached_or_at_last_epoch(in_tmp):
    ev = Events()
    learn = synth_learner(cbs=[StopAfter(max_epochs=3), ev])
    _fit(learn, 3)  # the limit falls on the last epoch: a normal, uncancelled fit
    assert ev.seen == dict(train_batches=24, valid_epochs=3, after_fit=1, cancel_fit=0)
    _fit(learn, 2)  # counts restart per fit
    assert ev.seen == dict(train_batches=16, valid_epochs=2, after_fit=1, cancel_fit=0)

def test_across_fits(in_tmp):
    cb, ev = StopAfter(max_epochs=3, across_fits=True), Events()
    learn = synth_learner(cbs=[cb, ev])
    _fit(learn, 2)
    assert ev.seen['train_batches'] == 16
    _fit(learn, 2)
    assert ev.seen['train_batches'] == 8 and cb.n_epochs == 3 and cb.stopped
    _fit(learn, 2)  # budget spent: stops before the first training batch, after_fit still runs
    assert ev.seen['train_batches'] == 0 and ev.seen['after_fit'] == 1 and learn.recorder.values == []
    # validate/get_preds are not fits and never raise, even with the budget spent
    learn.validate()
    preds, targs = learn.get_preds()
    assert len(preds) == 64
    cb.reset()
    _fit(learn, 1)
    assert ev.seen['train_batches'] == 8

def test_start_epoch_and_lr_find_not_counted(in_tmp):
    cb, ev = StopAfter(max_epochs=2), Events()
    learn = synth_learner(cbs=[cb, ev])
    _fit(learn, 6, start_epoch=3)  # the 3 skipped epochs do not count
    assert ev.seen['train_batches'] == 16 and learn.epoch == 4
    cb = StopAfter(max_batches=5, across_fits=True)
    learn = synth_learner(cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=20, show_plot=False)
    assert cb.n_batches == 0
    _fit(learn, 1)
    assert learn.train_iter == 5

def test_bad_values():
    for kw, name in [({}, 'max_batches'), (dict(max_batches=0), 'max_batches'), (dict(max_batches=-3), 'max_batches'),
                     (dict(max_epochs=2.0), 'max_epochs'), (dict(max_epochs=float('nan')), 'max_epochs'),
                     (dict(max_epochs=1, across_fits='yes'), 'across_fits')]:
        with pytest.raises((TypeError, ValueError), match=name): StopAfter(**kw)
