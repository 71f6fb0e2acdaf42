"""FDS: the statistics and calibration equal a float64 re-statement of the reference module's arithmetic (Yang et al. 2021,
YyzHarry/imbalanced-regression `fds.py` and `utils.calibrate_mean_var`), epoch by epoch; the callback's lifecycle, its
composition with LDSWeightedLoss and BatchSubsampler, its state for resume, and DDP."""
import math, pickle
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from scipy.ndimage import gaussian_filter1d
from scipy.signal.windows import triang
from fastai.callback.core import Callback, CancelFitException
from tsai_cbs.fds import FDS, FDSStats, fds_kernel_window
from tsai_cbs.lds import lds_bins
from tsai_cbs.testing import synth_learner, SynthModel

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------------
# The reference, written from the paper's description of its FDS module (float64). Buckets are bin indices
# 0..nb-1; the first and last take every index below/above them.

def ref_window(kernel, ks, sigma):
    "The reference's window: a unit impulse filtered by scipy's gaussian, scipy's triang, or the laplace density; sum 1"
    h = (ks - 1) // 2
    if kernel == 'gaussian': w = gaussian_filter1d(np.r_[np.zeros(h), 1., np.zeros(h)], sigma=sigma)
    elif kernel == 'triang': w = triang(ks)
    else: w = np.exp(-np.abs(np.arange(-h, h + 1)) / sigma) / (2 * sigma)
    return torch.tensor(w / w.sum(), dtype=torch.float64)


class RefFDS:
    "Running, last-epoch and smoothed statistics per bucket; the module's update order, aliasing included (`fresh`: the paper's text)"
    def __init__(self, nb, nf, window, start_update, start_smooth, momentum, fresh=False):
        self.nb, self.win, self.su, self.ss, self.mom, self.fresh = nb, window, start_update, start_smooth, momentum, fresh
        self.epoch = start_update
        z, o = torch.zeros(nb, nf, dtype=torch.float64), torch.ones(nb, nf, dtype=torch.float64)
        self.rm, self.rv = z.clone(), o.clone()
        self.lm, self.lv = z.clone(), o.clone()  # "last epoch" statistics used for calibration
        self.sm, self.sv = z.clone(), o.clone()
        self.tracked = torch.zeros(nb, dtype=torch.float64)

    def _smooth(self, t):
        h = (len(self.win) - 1) // 2
        x = F.pad(t.T.unsqueeze(1), (h, h), mode='reflect') if h else t.T.unsqueeze(1)
        return F.conv1d(x, self.win.view(1, 1, -1)).squeeze(1).T

    def _mask(self, labels, b):
        if b == 0: return labels <= b
        if b == self.nb - 1: return labels >= b
        return labels == b

    def end_epoch(self, feats, labels, e):
        "What the reference training script does after epoch `e` with that epoch's features"
        if e < self.su: return
        if not self.fresh and e == self.epoch + 1:
            self.epoch += 1
            self.lm, self.lv = self.rm, self.rv  # the module assigns the buffer itself: an alias of the running one
            self.sm, self.sv = self._smooth(self.rm), self._smooth(self.rv)
        for b in torch.unique(labels).tolist():
            cur = feats[self._mask(labels, b)]
            n = len(cur)
            mean, var = cur.mean(0), cur.var(0, unbiased=n != 1)
            self.tracked[b] += n
            f = self.mom if self.mom is not None else 1 - n / float(self.tracked[b])
            if e == self.su: f = 0
            self.rm[b] = (1 - f) * mean + f * self.rm[b]  # in place: seen through the alias
            self.rv[b] = (1 - f) * var + f * self.rv[b]
        if self.fresh:
            self.lm, self.lv = self.rm.clone(), self.rv.clone()
            self.sm, self.sv = self._smooth(self.rm), self._smooth(self.rv)

    def calibrate(self, feats, labels, e):
        if e < self.ss: return feats
        out = feats.clone()
        for b in torch.unique(labels).tolist():
            m = self._mask(labels, b)
            out[m] = ref_calibrate(out[m], self.lm[b], self.lv[b], self.sm[b], self.sv[b])
        return out


def ref_calibrate(x, m1, v1, m2, v2, lo=0.1, hi=10):
    "`calibrate_mean_var` as described: nothing when the variances sum to < 1e-10, zero-variance dimensions left alone"
    if v1.sum() < 1e-10: return x
    ok = v1 != 0
    x = x.clone()
    x[:, ok] = (x[:, ok] - m1[ok]) * (v2[ok] / v1[ok]).clamp(lo, hi).sqrt() + m2[ok]
    return x


def close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kernel,ks,sigma', [('gaussian', 5, 2), ('gaussian', 9, 1), ('gaussian', 3, 0.5),
                                             ('triang', 5, 1), ('triang', 7, 1), ('laplace', 5, 2), ('laplace', 9, 1)])
def test_window_is_the_reference_one(kernel, ks, sigma):
    w = fds_kernel_window(kernel, ks, sigma)
    assert w.sum() == pytest.approx(1, rel=1e-12)
    torch.testing.assert_close(torch.as_tensor(w), ref_window(kernel, ks, sigma), rtol=1e-12, atol=1e-15)


def stream(seed, nb=7, nf=5, n_epochs=6, bs=16):
    "Per epoch, batches of (features, bin indices): empty bins, a bin first seen at epoch 2, single-sample bins, constant dims, large means"
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(nb, nf, generator=g, dtype=torch.float64) * 3 + 1e3  # far from 0: cancellation would show
    out = []
    for e in range(n_epochs):
        n = 80
        idx = torch.randint(0, nb, (n,), generator=g)
        idx[idx == 3] = 2  # bin 3 never seen: an empty bin between seen ones
        if e < 2: idx[idx == 5] = 4  # bin 5 first seen at epoch 2
        if e == 1: idx[idx == 6] = 4; idx[0] = 6  # bin 6 has one sample in epoch 1 (variance 0)
        x = centres[idx] + torch.randn(n, nf, generator=g, dtype=torch.float64) * (0.5 + e * 0.1)
        x[idx == 1, 2] = 7.  # a constant dimension in bin 1: variance 0 there
        out.append([(x[a:a + bs], idx[a:a + bs]) for a in range(0, n, bs)])
    return out


@pytest.mark.parametrize('su,ss,mom,lag,kernel,ks,sigma', [
    (0, 1, 0.9, True, 'gaussian', 5, 2),   # the reference's defaults
    (0, 0, 0.9, True, 'triang', 3, 1),     # calibration asked for before any statistics exist
    (1, 3, 0.5, True, 'laplace', 5, 1),
    (2, 2, None, True, 'gaussian', 3, 1),  # cumulative average
    (0, 1, 0.9, False, 'gaussian', 5, 2),  # the paper's text: the newest statistics smoothed
    (1, 1, 0.3, False, 'triang', 5, 1),
])
def test_stats_and_calibration_equal_reference(su, ss, mom, lag, kernel, ks, sigma):
    data = stream(su * 10 + ss)
    nb, nf = 7, 5
    # the arithmetic alone, given the reference's window (the window itself is checked above)
    st = FDSStats(nb, ref_window(kernel, ks, sigma).numpy(), su, ss, mom, lag)
    ref = RefFDS(nb, nf, ref_window(kernel, ks, sigma), su, ss, mom, fresh=not lag)
    n_cal = 0
    for e, batches in enumerate(data):
        for x, idx in batches:
            z = st.calibrate(x, idx)
            close(z, ref.calibrate(x, idx, e), f"calibrated features, epoch {e}")
            n_cal += not torch.equal(z, x)
            st.accumulate(x, idx)
        ref.end_epoch(torch.cat([x for x, _ in batches]), torch.cat([i for _, i in batches]), e)
        st.end_epoch()
        if e >= su:
            close(st.running_mean, ref.rm, f"running mean after epoch {e}"); close(st.running_var, ref.rv, f"running var after epoch {e}")
            close(st.smoothed_mean, ref.sm, f"smoothed mean after epoch {e}"); close(st.smoothed_var, ref.sv, f"smoothed var after epoch {e}")
    first = max(ss, su + (2 if lag else 1))
    assert n_cal == sum(len(b) for b in data[first:])  # calibrated exactly from the epoch the timing says, every batch
    assert (st.running_var[3] == 1).all() and (st.running_mean[3] == 0).all()  # the empty bin kept its starting values
    assert (st.running_var[1, 2] == 0) and st.tracked[3] == 0


def test_accumulation_is_exact_far_from_zero():
    "Per-bin variance of features with mean 1e6 and std 1e-2 (float64), over many batches: relative error < 1e-6"
    g = torch.Generator().manual_seed(1)
    st = FDSStats(3, fds_kernel_window('triang', 1), 0, 99, 0.9)
    xs, ids = [], []
    for e in range(2):
        for _ in range(50):
            idx = torch.randint(0, 3, (64,), generator=g)
            x = 1e6 + idx[:, None].double() + 1e-2 * torch.randn(64, 4, generator=g, dtype=torch.float64)
            st.accumulate(x, idx)
            if e == 1: xs.append(x); ids.append(idx)
        if e == 0: st.end_epoch()
    st.momentum = 0.0  # epoch 1's statistics alone, to compare with the direct computation
    st.end_epoch()
    x, idx = torch.cat(xs), torch.cat(ids)
    for b in range(3):
        close(st.running_mean[b], x[idx == b].mean(0), 'mean'); close(st.running_var[b], x[idx == b].var(0), 'var')


def test_unit_silent_in_one_bin_keeps_exactly_zero_variance():
    "float32 features, a ReLU unit that is 0 for every sample of one bin only: its variance there is exactly 0 every epoch, and calibration leaves it 0"
    g = torch.Generator().manual_seed(3)
    st = FDSStats(4, fds_kernel_window('triang', 3), 0, 1, 0.9, lag=False)
    for e in range(4):
        for _ in range(10):
            idx = torch.randint(0, 4, (128,), generator=g)
            x = (torch.randn(128, 3, generator=g) + 5.1234567 * idx[:, None]).relu()
            x[idx == 0, 1] = 0.  # silent in bin 0, active in bins 1-3 (their means about 5 to 15)
            z = st.calibrate(x, idx)
            assert (z[idx == 0, 1] == 0).all(), f"epoch {e}: a silent unit was moved"
            st.accumulate(x, idx)
        st.end_epoch()
        assert st.running_var[0, 1] == 0 and st.running_mean[0, 1] == 0, e
    assert st.calibrating and (st.smoothed_mean[0, 1] > 1)  # its neighbours' mean, which it would be moved towards


def test_stats_follow_the_batch_device_and_dtype():
    st = FDSStats(4, fds_kernel_window('triang', 3), 0, 0, 0.9, lag=False)
    x, idx = torch.randn(10, 3), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    st.accumulate(x, idx); st.end_epoch()
    z = st.calibrate(x.half(), idx)
    assert z.dtype == torch.float16 and z.shape == x.shape
    z32 = st.calibrate(x, idx)
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z.float(), z32, rtol=2e-3, atol=2e-3)
    with pytest.raises(RuntimeError, match='4 values per sample'): st.accumulate(torch.randn(2, 4), idx[:2])
    with pytest.raises(ValueError, match='ks'): FDSStats(2, fds_kernel_window('triang', 5))


@pytest.mark.parametrize('kind', ['float32', 'float64', 'int64', 'float32 labels, float64 bins'])
def test_batch_binning_is_the_lds_rule(kind):
    "The hook's lean binning (`LDSBins._bin_fast`) gives exactly `LDSBins.bin_index`, out-of-range, NaN and edge labels included"
    g = torch.Generator().manual_seed(0)
    if kind == 'int64': train, y = torch.randint(0, 40, (500,), generator=g), torch.randint(-5, 50, (300,), generator=g)
    else:
        dt = torch.float64 if kind == 'float64' else torch.float32
        train = (torch.randn(500, generator=g) * 3).exp().to(dt)
        y = torch.cat([(torch.randn(300, generator=g) * 4).exp(), torch.tensor([float('nan'), float('inf'), -float('inf'), 0., -1.])]).to(dt)
        y = torch.cat([y, train[:50]])  # the very values the bins were made from (edges included)
        if kind.startswith('float32 labels'): train = train.double()
    bins = lds_bins(train, reweight='none')
    assert torch.equal(bins._bin_fast(y), bins.bin_index(y))


# ---------------------------------------------------------------------------------------------------------------
# The callback

class FeatureTap(Callback):
    "Records, per training batch, the features entering the model's head before FDS (a pre-hook put first), the targets, and the features the head got"
    order = -50
    def __init__(self, layer_fn=lambda m: m.head): self.layer_fn, self.rec = layer_fn, []
    def before_fit(self):
        self.h = self.layer_fn(self.learn.model).register_forward_pre_hook(self._pre, prepend=True)
        self.hc = self.layer_fn(self.learn.model).register_forward_hook(self._post)  # sees the inputs the layer got
    def _pre(self, m, args):
        if self.training: self.cur = [args[0].detach().double().clone(), self.learn.yb[0].detach().clone()]
    def _post(self, m, args, out):
        if self.training: self.cur.append(args[0].detach().double().clone()); self.rec.append((self.epoch, *self.cur))
    def after_fit(self): self.h.remove(); self.hc.remove()


class ToDouble(Callback):
    "Batches in float64, for a Learner whose model is float64"
    order = -10
    def before_batch(self): self.learn.xb, self.learn.yb = [tuple(t.double() for t in b) for b in (self.xb, self.yb)]


def fit_with_tap(n_epoch=4, double=False, **kwargs):
    cbs = kwargs.pop('cbs', [])
    fds = FDS(**kwargs)
    tap = FeatureTap()
    model = SynthModel().double() if double else None
    learn = synth_learner(cbs=[tap, fds, *cbs] + ([ToDouble()] if double else []), model=model, n_train=256, n_valid=64, bs=32)
    with learn.no_bar(), learn.no_logging(): learn.fit(n_epoch)
    return learn, fds, tap


@pytest.mark.parametrize('lag', [True, False])
def test_callback_equals_reference_on_the_training_stream(lag):
    "In a real fit (float64 model): the statistics and the calibrated features the head receives equal the reference fed the same stream"
    learn, fds, tap = fit_with_tap(4, double=True, lag=lag, kernel='gaussian', ks=5, sigma=2, start_smooth=1)
    bins = fds._layout
    nf = 16
    ref = RefFDS(bins.n_bins, nf, ref_window('gaussian', 5, 2), 0, 1, 0.9, fresh=not lag)
    by_epoch = {}
    for e, x, y, after in tap.rec: by_epoch.setdefault(e, []).append((x, bins.bin_index(y), after))
    n_changed = 0
    for e in range(4):
        for x, idx, after in by_epoch[e]:
            close(after, ref.calibrate(x, idx, e), f"head input, epoch {e}")
            n_changed += not torch.equal(after, x)
        ref.end_epoch(torch.cat([x for x, _, _ in by_epoch[e]]), torch.cat([i for _, i, _ in by_epoch[e]]), e)
    close(fds.stats.running_mean, ref.rm, 'running mean'); close(fds.stats.running_var, ref.rv, 'running var')
    close(fds.stats.smoothed_mean, ref.sm, 'smoothed mean'); close(fds.stats.smoothed_var, ref.sv, 'smoothed var')
    assert n_changed == sum(len(by_epoch[e]) for e in range(2 if lag else 1, 4))


def test_default_fds_on_a_model_ending_in_linear():
    "`FDS()` with defaults: head input hooked in training only, validation/get_preds untouched, hooks gone after fit, picklable"
    learn = synth_learner(cbs=FDS(), n_train=128, n_valid=64)
    x = learn.dls.valid.one_batch()[0]
    with learn.no_bar(), learn.no_logging(): learn.fit(3)
    fds = learn.fds
    assert fds.layer_name == 'head' and fds.stats.epoch == 3 and fds.stats.calibrating
    assert not learn.model.head._forward_pre_hooks and not learn.model.head._forward_hooks
    learn.model.eval()
    with torch.no_grad(): plain = learn.model(x)
    preds, _ = learn.get_preds(dl=learn.dls.valid)
    torch.testing.assert_close(preds[:len(x)], plain)
    assert fds.stats.epoch == 3  # get_preds/validate neither gathered nor counted an epoch
    learn.validate()
    assert fds.stats.epoch == 3
    m2, f2 = pickle.loads(pickle.dumps((learn.model, fds)))
    assert not m2.head._forward_pre_hooks and f2._handle is None and f2.stats._scratch is None  # no scratch buffers in a pickle
    torch.testing.assert_close(f2.stats.running_mean, fds.stats.running_mean)


def test_warns_when_the_window_spans_much_of_the_bins():
    """The paper's window (ks=5) over 12 bins, what the Rice rule gives Tecator's 172 labels, tripled the demo's test MAE:
    FDS says so when a fit starts, with the end bins' shift, which is what smoothing does to a ramp; 20 bins or ks=3 are quiet"""
    import warnings
    from tsai_cbs.fds import _smooth_bins, _end_shift
    for ks, sigma in ((5, 2), (3, 1), (9, 1)):
        w = fds_kernel_window('gaussian', ks, sigma)
        ramp = torch.arange(12, dtype=torch.float64)[:, None]  # bin means rising by one per bin
        sm = _smooth_bins(ramp, torch.as_tensor(w))[:, 0]
        assert float(sm[0]) == pytest.approx(_end_shift(w), rel=1e-12) and float(11 - sm[-1]) == pytest.approx(_end_shift(w), rel=1e-12)
        torch.testing.assert_close(sm[ks // 2:12 - ks // 2], ramp[ks // 2:12 - ks // 2, 0])  # in the middle a ramp stays put
    y = torch.linspace(0., 1., 172)
    def said(**kw):
        learn = synth_learner(cbs=FDS(labels=y, **kw), n_train=64, n_valid=16)
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            with learn.no_bar(), learn.no_logging(): learn.fit(1)
        return [str(w.message) for w in ws if str(w.message).startswith('FDS:')]
    msg = said()
    assert len(msg) == 1 and 'spans 5 of the 12 label bins' in msg[0] and '`n_bins` >= 20' in msg[0], msg
    assert '1.2 bins' in msg[0] and '10% of the label range' in msg[0], msg  # 2 x (w1 + 2 w2) of the default window: 1.155 bins
    assert said(n_bins=20) == [] and said(ks=3, sigma=1) == []
    assert len(said(n_bins=19)) == 1


def test_validation_inside_fit_sees_plain_features():
    "During fit, validation batches reach the head unchanged (the hook acts on training batches only)"
    seen = []
    class Tap(Callback):
        def before_fit(self): self.h = self.learn.model.head.register_forward_pre_hook(lambda m, a: seen.append((self.training, a[0].detach().clone())))
        def after_fit(self): self.h.remove()
    learn = synth_learner(cbs=[FDS(start_smooth=0, lag=False), Tap()], n_train=64, n_valid=32, bs=32)
    with learn.no_bar(), learn.no_logging(): learn.fit(3)
    assert learn.fds.stats.calibrating
    learn.model.eval()
    with torch.no_grad(): plain = learn.model.body(learn.dls.valid.one_batch()[0]).mean(-1)
    last_valid = [t for training, t in seen if not training][-1]  # the last epoch's validation batch, by the final model
    torch.testing.assert_close(last_valid, plain)


def test_lr_find_and_cancel_leave_model_clean():
    class Boom(Callback):
        def after_batch(self):
            if self.training and self.iter == 2: raise CancelFitException()
    class Err(Callback):
        def after_batch(self):
            if self.training and self.iter == 1: raise RuntimeError('boom')
    learn = synth_learner(cbs=FDS(), n_train=128, n_valid=32)
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=5, show_plot=False)
        assert learn.fds.stats is None  # lr_find is not a training fit
        learn.fit(2, cbs=Boom())
        assert not learn.model.head._forward_pre_hooks and learn.fds.stats.epoch == 0
        with pytest.raises(RuntimeError, match='boom'): learn.fit(1, cbs=Err())
        assert not learn.model.head._forward_pre_hooks and learn.fds._handle is None
        learn.fit(2)
    assert learn.fds.stats.epoch == 2 and not learn.model.head._forward_pre_hooks


def test_fit_cbs_and_epochs_continue_over_fits():
    learn = synth_learner(n_train=64, n_valid=32)
    fds = FDS()
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, cbs=fds)
        assert not learn.model.head._forward_pre_hooks and fds not in learn.cbs
        learn.fit(1, cbs=fds)
    assert fds.stats.epoch == 3
    fds.reset()
    assert fds.stats is None


def test_bad_arguments_are_named_before_anything_changes():
    for kw, name in [(dict(kernel='box'), 'kernel'), (dict(ks=4), 'ks'), (dict(ks=0), 'ks'), (dict(sigma=0), 'sigma'),
                     (dict(momentum=1.5), 'momentum'), (dict(momentum='x'), 'momentum'), (dict(start_update=-1), 'start_update'),
                     (dict(start_smooth=1.5), 'start_smooth'), (dict(lag=1), 'lag'), (dict(feature='mid'), 'feature'),
                     (dict(n_bins=0), 'n_bins'), (dict(label_range=(3, 1)), 'label_range'), (dict(bins=[1, 2]), 'bins'),
                     (dict(labels=[[1, 2], [3, 4]]), 'labels'), (dict(layer=3), 'layer')]:
        with pytest.raises((ValueError, TypeError), match=name): FDS(**kw)
    with pytest.raises(ValueError, match='not both'): FDS(bins=lds_bins([1., 2., 3.]), n_bins=3)
    # errors found at fit: raised before any hook is set or step taken
    for kw, name in [(dict(layer='nope'), 'layer'), (dict(layer=nn.Linear(2, 2)), 'layer'), (dict(ks=9, n_bins=3), 'ks')]:
        learn = synth_learner(cbs=FDS(**kw), n_train=64, n_valid=32)
        w0 = learn.model.head.weight.detach().clone()
        with learn.no_bar(), learn.no_logging(), pytest.raises(ValueError, match=name): learn.fit(1)
        assert torch.equal(learn.model.head.weight, w0) and not learn.model.head._forward_pre_hooks
    learn = synth_learner(model=nn.Sequential(nn.Flatten(), nn.Conv1d(1, 1, 1)), cbs=FDS(), n_train=64, n_valid=32)
    with learn.no_bar(), learn.no_logging(), pytest.raises(ValueError, match='nn.Linear'): learn.fit(1)


def test_layer_by_name_or_module_and_output():
    m = SynthModel(hidden=8)
    learn = synth_learner(model=m, cbs=FDS(layer='body.2', feature='output', start_smooth=0, lag=False, n_bins=5), n_train=64, n_valid=32)
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    assert learn.fds.layer_name == 'body.2' and learn.fds.stats.n_features == 8 * 64
    learn = synth_learner(cbs=FDS(layer=None), n_train=64, n_valid=32)
    fds2 = FDS(layer=learn.model.head)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=fds2)
    assert fds2.layer_name == 'head'


def test_target_with_several_values_per_sample_is_an_error():
    learn = synth_learner('sequence', model=nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 64)), cbs=FDS(labels=torch.arange(10.)), n_train=64, n_valid=32)
    with learn.no_bar(), learn.no_logging(), pytest.raises(RuntimeError, match='one label per sample'): learn.fit(1)
    assert not learn.model[1]._forward_pre_hooks


def test_state_dict_resume_equals_uninterrupted(in_tmp):
    "fit(2) + state_dict -> new Learner/FDS + load_state_dict + fit(2, start_epoch=2) gives the statistics of fit(4)"
    def make(fds): return synth_learner(cbs=fds, n_train=128, n_valid=32, shuffle=False)
    a = FDS(); la = make(a)
    with la.no_bar(), la.no_logging(): la.fit(4)
    b = FDS(); lb = make(b)
    with lb.no_bar(), lb.no_logging(): lb.fit(2)
    torch.save(b.state_dict(), in_tmp/'fds.pt')
    state = torch.load(in_tmp/'fds.pt', weights_only=True)  # plain numbers, strings and tensors: as SaveModel reads checkpoints
    lb.save('m2')
    c = FDS(); lc = make(c); lc.load('m2')
    c.load_state_dict(state)
    for k in ('lo', 'hi', 'n_bins', 'scale', 'dtype', 'reweight'):  # the bins come back as they were
        assert getattr(c._layout, k) == getattr(b._layout, k), k
    assert torch.equal(c._layout.counts, b._layout.counts)
    assert c.stats.epoch == 2 and c.stats.running_mean.device.type == 'cpu'
    with lc.no_bar(), lc.no_logging(): lc.fit(2)
    for k in ('running_mean', 'running_var', 'smoothed_mean', 'smoothed_var', 'tracked'):
        torch.testing.assert_close(getattr(c.stats, k), getattr(a.stats, k), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='state'): FDS().load_state_dict({'x': 1})
    with pytest.raises(TypeError, match='state'): FDS().load_state_dict([1])
    with pytest.raises(ValueError, match='stats'): FDS().load_state_dict({'stats': {'x': 1}, 'bins': None})
    with pytest.raises(ValueError, match='bins'): FDS().load_state_dict({'stats': None, 'bins': {'lo': 0}})
    fresh = FDS(); fresh.load_state_dict(FDS().state_dict())
    assert fresh.stats is None


def test_save_model_resume_after_a_crash_equals_uninterrupted(in_tmp):
    "SaveModel(resume=True) saves and restores FDS's state: a run that crashed after epoch 2 and resumed ends like fit(4)"
    from tsai_cbs.save_model import SaveModel
    class Crash(Callback):
        order = 10**6
        def after_epoch(self):
            if self.epoch == 1: raise RuntimeError('crash')
    def make(cbs): return synth_learner(cbs=cbs, n_train=128, n_valid=32, path=in_tmp)
    a = FDS(); la = make([a])
    with la.no_bar(), la.no_logging(): la.fit(4)
    b = FDS(); lb = make([b, SaveModel(resume=True, with_opt=True), Crash()])
    with lb.no_bar(), lb.no_logging(), pytest.raises(RuntimeError, match='crash'): lb.fit(4)
    assert b.stats.epoch == 2 and not lb.model.head._forward_pre_hooks
    c = FDS(); lc = make([c, SaveModel(resume=True, with_opt=True)])
    with lc.no_bar(), lc.no_logging(): lc.fit(4)
    assert c.stats.epoch == 4
    for k in ('running_mean', 'running_var', 'smoothed_mean', 'smoothed_var', 'tracked'):
        assert torch.equal(getattr(c.stats, k), getattr(a.stats, k)), k
    assert lc.recorder.values[-1] == la.recorder.values[-1]


def test_composes_with_lds_weighted_loss_and_batch_subsampler():
    "With BatchSubsampler the statistics are those of the kept rows (features and labels paired), with LDSWeightedLoss too"
    from tsai_cbs.loss_weights import LDSWeightedLoss
    from tsai_cbs.batch_subsampler import BatchSubsampler
    from tsai_cbs.testing import synth_data
    _, y = synth_data(256 + 64)
    learn, fds, tap = fit_with_tap(2, lag=False, start_smooth=0, cbs=[BatchSubsampler(sample_pct=0.5, seed=3), LDSWeightedLoss(y[:256])])
    assert all(len(x) == 16 for _, x, _, _ in tap.rec)  # half of each batch of 32 was kept and reached the head
    bins = fds._layout
    ref = RefFDS(bins.n_bins, 16, ref_window('gaussian', 5, 2), 0, 0, 0.9, fresh=True)
    for e in range(2):
        rows = [(x, bins.bin_index(y)) for ee, x, y, _ in tap.rec if ee == e]
        ref.end_epoch(torch.cat([x for x, _ in rows]), torch.cat([i for _, i in rows]), e)
    close(fds.stats.running_mean, ref.rm, 'running mean'); close(fds.stats.running_var, ref.rv, 'running var')
    assert fds.stats.tracked.sum() == 2 * 256 // 2


_X, _Y = None, None
def _x(i): return _X[i]
def _y(i): return _Y[i].float()

def test_labels_not_found_is_a_clear_error():
    "A training set FDS cannot read labels from: a ValueError naming `labels` at fit, before any hook or step"
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from tsai_cbs.testing import synth_data
    X, y = synth_data(64)
    items = [(X[i], y[i]) for i in range(64)]  # a plain list of (x, y) pairs
    dls = DataLoaders(DataLoader(items[:48], bs=16), DataLoader(items[48:], bs=16))
    learn = synth_learner(cbs=FDS(), n_train=48, n_valid=16)
    learn.dls = dls
    w0 = learn.model.head.weight.detach().clone()
    with learn.no_bar(), learn.no_logging(), pytest.raises(ValueError, match='`labels`'): learn.fit(1)
    assert torch.equal(learn.model.head.weight, w0) and not learn.model.head._forward_pre_hooks


def test_labels_from_fastai_datasets_and_export(in_tmp):
    "FDS() finds the labels of a fastai Datasets; learn.export after fit pickles no hook, and the loaded model predicts the same"
    global _X, _Y
    from fastai.data.core import Datasets
    from fastai.learner import Learner, load_learner
    from fastai.losses import MSELossFlat
    from tsai_cbs.testing import synth_data
    _X, _Y = synth_data(96)
    items = list(range(96))
    dls = Datasets(items, [[_x], [_y]], splits=[items[:64], items[64:]]).dataloaders(bs=16)
    learn = Learner(dls, SynthModel(), loss_func=MSELossFlat(), cbs=FDS(start_smooth=0, lag=False))
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    ref = lds_bins(_Y[:64], reweight='none')
    assert learn.fds._layout.n_bins == ref.n_bins and learn.fds._layout.lo == ref.lo and learn.fds.stats.calibrating
    x = dls.valid.one_batch()[0]
    learn.model.eval()
    with torch.no_grad(): plain = learn.model(x)
    learn.export(in_tmp/'l.pkl')
    l2 = load_learner(in_tmp/'l.pkl')
    assert not l2.model.head._forward_pre_hooks and not l2.model.head._forward_hooks
    with torch.no_grad(): torch.testing.assert_close(l2.model.eval()(x), plain)


def test_ddp_statistics_are_reduced_over_ranks(in_tmp):
    "2 CPU processes: both end with the same statistics, equal to those of all samples of both ranks"
    from tsai_cbs.testing import run_distributed
    res = run_distributed('''
        import torch, torch.distributed as dist
        from fastai.callback.core import Callback
        from tsai_cbs.testing import synth_learner, patch_distributed_dl_for_cpu
        from tsai_cbs.fds import FDS
        patch_distributed_dl_for_cpu()
        rec = []
        class Tap(Callback):
            order = -50
            def before_fit(self): self.h = self.learn.model.head.register_forward_pre_hook(self.f, prepend=True)  # before DDP wraps it
            def f(self, m, a):
                if self.training: rec.append((self.epoch, a[0].detach().double().clone(), self.learn.yb[0].detach().clone()))
            def after_fit(self): self.h.remove()
        fds = FDS(lag=False)
        learn = synth_learner(cbs=[fds], n_train=128, n_valid=32)
        with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(2, cbs=Tap())
        torch.save(dict(stats=fds.stats.state_dict(), rec=rec, lo=fds._layout.lo, scale=fds._layout.scale, n=fds._layout.n_bins),
                   f'rank{dist.get_rank()}.pt')
    ''', nproc=2, cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = [torch.load(in_tmp/f'rank{r}.pt', weights_only=False) for r in (0, 1)]
    for k in ('running_mean', 'running_var', 'smoothed_mean', 'smoothed_var', 'tracked'):
        assert torch.equal(r0['stats'][k], r1['stats'][k]), k
    bins = lds_bins(torch.zeros(2), label_range=(0, 1))  # layout rule only: rebuild the rank's from its numbers
    bins.lo, bins.scale, bins.n_bins = r0['lo'], r0['scale'], r0['n']
    ref = RefFDS(r0['n'], 16, ref_window('gaussian', 5, 2), 0, 1, 0.9, fresh=True)
    for e in range(2):
        rows = [(x, bins.bin_index(y)) for r in (r0, r1) for ee, x, y in r['rec'] if ee == e]
        ref.end_epoch(torch.cat([x for x, _ in rows]), torch.cat([i for _, i in rows]), e)
    assert r0['stats']['tracked'].sum() == 2 * 128
    close(r0['stats']['running_mean'], ref.rm, 'running mean'); close(r0['stats']['running_var'], ref.rv, 'running var')


# -- no host reads per batch (CPU stand-in for a GPU sync check; benchmarks/fds.py checks on CUDA) ----------------------

from host_reads import HostReads

class Watch(Callback):
    "Watch each training batch from the first before_batch to the last after_loss; `control` reads a value back"
    order = -10**6
    def __init__(self, control=False): self.control, self.seen = control, []
    def before_batch(self):
        if not self.training: return
        self.mode = HostReads(); self.mode.__enter__()
        if self.control: self.x.sum().item()
class Unwatch(Callback):
    order = 10**6
    def after_loss(self):
        mode = self.watch.__dict__.pop('mode', None)
        if mode is not None: mode.__exit__(None, None, None); self.watch.seen += mode.seen

@pytest.mark.parametrize('config', ['control', 'reference timing', 'lag=False', 'with BatchSubsampler'])
def test_no_host_reads_per_batch(config):
    "Every training batch of 3 epochs (gathering, then calibrating) runs FDS's hook without a value read back to the host"
    from tsai_cbs.batch_subsampler import BatchSubsampler
    cbs = {'control': [FDS()], 'reference timing': [FDS()], 'lag=False': [FDS(lag=False, start_smooth=0)],
           'with BatchSubsampler': [FDS(lag=False, start_smooth=0), BatchSubsampler(sample_pct=(.5, 1.), seed=0)]}[config]
    learn = synth_learner(cbs=cbs + [Watch(config == 'control'), Unwatch()], n_train=128, n_valid=32)
    with learn.no_bar(), learn.no_logging(): learn.fit(3)
    assert learn.fds.stats.calibrating
    if config == 'control': assert learn.watch.seen == ['item'] * 12
    else: assert learn.watch.seen == [], sorted(set(learn.watch.seen))
