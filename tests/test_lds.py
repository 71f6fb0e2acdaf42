"Tests of `tsai_cbs.lds`: exact binning, weights against a plain float64 reference, inputs, errors, plots, properties."
import io, math, threading
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, HealthCheck, strategies as st
from scipy.ndimage import convolve1d, gaussian_filter1d
from scipy.signal.windows import triang

from tsai_cbs.lds import LDS_KERNELS, LDSBins, get_lds_kernel_window, lds_bins, prepare_LDS_weights

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def skewed(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).lognormal(0, 1, n).astype(dtype)


def reference_weights(labels, edges, reweight='inv', kernel='gaussian', ks=9, sigma=1, max_rel_weight=None):
    "Straightforward float64 LDS on given bin edges: searchsorted per sample, histogram, scipy convolution"
    y = np.asarray(labels, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    idx = np.clip(np.searchsorted(e[1:-1], y, side='right'), 0, len(e) - 2)
    counts = np.bincount(idx, minlength=len(e) - 1).astype(np.float64)
    if reweight == 'sqrt_inv': counts = np.sqrt(counts)
    smoothed = convolve1d(counts, get_lds_kernel_window(kernel, ks, sigma), mode='constant')
    w = 1 / smoothed[idx] if reweight != 'none' else np.ones(len(y))
    if max_rel_weight is not None: w = np.minimum(w, w.min() * max_rel_weight)
    return w / w.mean(), idx


# --- binning ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('n_bins,label_range', [(None, None), (7, None), (50, None), (13, (0.5, 3.0)), (1, None)])
def test_bins_match_searchsorted_on_edges(dtype, n_bins, label_range):
    y = skewed(5000, dtype=dtype)
    b = lds_bins(y, n_bins=n_bins, label_range=label_range)
    e = b.edges.numpy()
    assert e.dtype == dtype and len(e) == b.n_bins + 1
    # every edge is within 8 ulp (of the range's magnitude) of the ideal float64 edge: rounding of y - lo, scale and product
    ideal = b.lo + (b.hi - b.lo) * np.arange(b.n_bins + 1) / b.n_bins
    assert np.all(np.abs(e.astype(np.float64) - ideal) <= 8 * np.spacing(dtype(max(abs(b.lo), abs(b.hi)))))
    assert np.all(np.diff(e) >= 0)
    # probe labels: the data, every edge, one step below and above each edge, the extremes
    probes = np.concatenate([y, e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf), [y.min(), y.max()]]).astype(dtype)
    idx = b.bin_index(probes).numpy()
    direct = np.clip(np.searchsorted(e[1:-1], probes, side='right'), 0, b.n_bins - 1)
    np.testing.assert_array_equal(idx, direct)
    # the documented rule computed per sample by numpy in the compute dtype: clamp(floor((y - lo) * scale), 0, n_bins - 1)
    with np.errstate(over='ignore'):
        rule = np.clip(np.floor((probes - dtype(b.lo)) * dtype(b.scale)), 0, b.n_bins - 1).astype(np.int64)
    np.testing.assert_array_equal(idx, rule)
    # a label exactly on an interior edge is in the bin on its right, the one just below in the bin on its left
    k = np.arange(1, b.n_bins)
    np.testing.assert_array_equal(b.bin_index(e[1:-1]).numpy(), k)
    np.testing.assert_array_equal(b.bin_index(np.nextafter(e[1:-1], -np.inf)).numpy(), k - 1)
    if label_range is None:
        assert b.bin_index(y.max()[None]).item() == b.n_bins - 1 and b.bin_index(y.min()[None]).item() == 0
        np.testing.assert_array_equal(b.counts.numpy(), np.histogram(y, bins=e)[0])  # numpy: last bin closed


def test_bins_of_exactly_representable_edges():
    "Labels on the ideal edges of a grid whose edges are exact: every one lands in the bin starting there"
    y = np.arange(0, 10.25, 0.25, dtype=np.float32)  # 41 labels, edges every 0.25 with 40 bins
    b = lds_bins(y, n_bins=40)
    np.testing.assert_array_equal(b.bin_index(y).numpy(), np.minimum(np.arange(41), 39))
    np.testing.assert_array_equal(b.edges.numpy(), y)


def test_n_bins_rules():
    y = skewed(400)
    assert lds_bins(y).n_bins == math.ceil(2 * 400 ** (1 / 3)) == 15
    assert lds_bins(skewed(100_000)).n_bins == 93
    # integer-valued labels: one bin per integer, centred
    ages = np.random.default_rng(1).integers(18, 90, 1000)
    for lab in (ages, ages.astype(np.float32), torch.tensor(ages), ages.astype(np.int16)):
        b = lds_bins(lab)
        assert (b.n_bins, b.lo, b.hi) == (ages.max() - ages.min() + 1, ages.min() - 0.5, ages.max() + 0.5)
        np.testing.assert_array_equal(b.bin_index(lab).numpy(), ages - ages.min())
    # a float that is not whole anywhere but at the end still counts as float data
    f = ages.astype(np.float64); f[-1] += 0.5
    assert lds_bins(f).n_bins == math.ceil(2 * 1000 ** (1 / 3))
    # too wide an integer span: Rice rule; a label_range: Rice rule
    assert lds_bins(np.arange(0, 5000, 5)).n_bins == math.ceil(2 * 1000 ** (1 / 3))
    assert lds_bins(ages, label_range=(0, 100)).n_bins == math.ceil(2 * 1000 ** (1 / 3))


def test_label_range_clips_into_end_bins():
    y = skewed(3000)
    b = lds_bins(y, n_bins=10, label_range=(0.5, 4))
    lo_side, hi_side = (y < 0.5).sum(), (y >= b.edges[-2].item()).sum()
    assert b.counts[0].item() == lo_side + ((y >= 0.5) & (y < b.edges[1].item())).sum()
    assert b.counts[-1].item() == hi_side and b.counts.sum().item() == len(y)
    w = b(y)
    assert torch.equal(w[torch.from_numpy(y < 0.5)], b.weights[0].expand(lo_side))
    assert torch.equal(w[torch.from_numpy(y > 4)], b.weights[-1].expand((y > 4).sum()))
    # later lookups clip the same way, NaN goes to bin 0
    probe = torch.tensor([-1e30, 0.0, 1e30, math.inf, -math.inf, math.nan])
    assert b.bin_index(probe).tolist() == [0, 0, 9, 9, 0, 0]


def test_all_equal_labels():
    b = lds_bins([2] * 5)  # integer: its own bin
    assert (b.n_bins, b.lo, b.hi) == (1, 1.5, 2.5)
    b = lds_bins(np.full(5, 3.75))  # float: range widened by 0.5 on each side
    assert (b.n_bins, b.lo, b.hi) == (math.ceil(2 * 5 ** (1 / 3)), 3.25, 4.25)
    tiny = np.array([0, 7.8e-41, 0], dtype=np.float32)  # a subnormal spread: as good as equal
    b = lds_bins(tiny, n_bins=4)
    assert b.lo == -0.5 and b.bin_index(tiny).tolist() == [2, 2, 2]
    for lab in ([3.7] * 5, [2] * 5, tiny):
        assert torch.equal(prepare_LDS_weights(lab, show_plot=False), torch.ones(len(lab)))
        assert torch.equal(prepare_LDS_weights(lab, n_bins=10, show_plot=False), torch.ones(len(lab)))


# --- weights ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kw', [dict(), dict(reweight='sqrt_inv'), dict(lds_kernel='triang', lds_ks=5),
                                dict(lds_kernel='laplace', lds_sigma=2), dict(max_rel_weight=3), dict(n_bins=200),
                                dict(reweight='sqrt_inv', lds_kernel='gaussian', lds_ks=5, lds_sigma=2, n_bins=50),
                                dict(reweight='none'), dict(lds_ks=1)])
def test_weights_match_reference(kw):
    y = skewed(20_000, seed=3)
    w = prepare_LDS_weights(y, show_plot=False, **kw)
    b = lds_bins(y, **kw)
    assert w.dtype == torch.float32 and w.shape == (len(y),) and w.device.type == 'cpu'
    ref, idx = reference_weights(y, b.edges.numpy(), kw.get('reweight', 'inv'), kw.get('lds_kernel', 'gaussian'),
                                 kw.get('lds_ks', 9), kw.get('lds_sigma', 1), kw.get('max_rel_weight'))
    np.testing.assert_array_equal(b.bin_index(y).numpy(), idx)
    np.testing.assert_allclose(w.numpy(), ref, rtol=2e-6)
    assert abs(w.double().mean().item() - 1) < 1e-6
    assert torch.isfinite(w).all() and (w > 0).all()
    if 'max_rel_weight' in kw: assert w.max() / w.min() <= kw['max_rel_weight'] * (1 + 1e-6)


def test_prepare_equals_bins_call_bit_for_bit():
    y = skewed(50_000, seed=4)
    for kw in (dict(), dict(reweight='sqrt_inv', n_bins=33), dict(label_range=(0.2, 5.0), max_rel_weight=10)):
        assert torch.equal(prepare_LDS_weights(y, show_plot=False, **kw), lds_bins(y, **kw)(y))
    big = torch.from_numpy(skewed(4_500_000, seed=5))  # > 4 chunks of 2**20 on the CPU, result on huge pages
    b = lds_bins(big)
    w = prepare_LDS_weights(big, show_plot=False)
    assert torch.equal(w, b(big))
    assert torch.equal(w[:1000], b(big[:1000]))  # chunking does not change a label's weight
    assert b.counts.sum().item() == len(big)
    # the huge-page result is an ordinary tensor
    import pickle
    assert w.is_contiguous() and torch.equal(pickle.loads(pickle.dumps(w)), w)
    buf = io.BytesIO(); torch.save(w, buf); buf.seek(0); assert torch.equal(torch.load(buf), w)
    w.mul_(2).div_(2); assert torch.equal(w, b(big))  # in place (exact: powers of two)
    w.resize_(len(big) + 1000); assert w.shape == (len(big) + 1000,) and torch.equal(w[:len(big)], b(big))  # its storage grows
    w[len(big):] = 0.5  # the grown part is uninitialized memory (a NaN there would make the comparisons below fail)
    assert torch.equal(torch.from_numpy(w.numpy()), w)  # (after resize_: torch pins a storage shared with numpy)
    w2 = w * 2; del w; assert torch.equal(w2[:len(big)] / 2, b(big))
    big64 = skewed(2_200_000, seed=6, dtype=np.float64)  # float64 labels, several chunks: no in-place path
    assert torch.equal(prepare_LDS_weights(big64, show_plot=False), lds_bins(big64)(big64))


def test_empty_smoothed_bins_and_weight_table():
    y = np.r_[np.zeros(50), np.full(5, 100.)]  # bins in between are empty even after smoothing
    b = lds_bins(y, n_bins=100, lds_ks=3)
    seen = b.weights[b.counts > 0]
    assert torch.isfinite(b.weights).all() and (b.weights > 0).all()
    assert b.weights[50].item() == seen.max().item()  # unreachable bin: largest weight of a label
    assert b.weights.max().item() == seen.max().item()  # no unseen label weighs more than the rarest seen one
    assert b.weights[1].item() < seen.max().item()  # next to the dense cluster: its own (smaller) weight
    assert abs((b.counts * b.weights.double()).sum().item() / len(y) - 1) < 1e-6


def test_sqrt_inv_and_inv_follow_the_paper():
    "Two well separated clusters, 100 vs 4 labels: inv weights ratio = density ratio, sqrt_inv its square root"
    y = np.r_[np.zeros(100), np.full(4, 50.)]
    wi = prepare_LDS_weights(y, n_bins=51, show_plot=False)
    ws = prepare_LDS_weights(y, n_bins=51, reweight='sqrt_inv', show_plot=False)
    assert wi[-1].item() / wi[0].item() == pytest.approx(25, rel=1e-6)
    assert ws[-1].item() / ws[0].item() == pytest.approx(5, rel=1e-6)


# --- inputs ----------------------------------------------------------------------------------------------

def test_input_types_give_the_same_weights():
    y64 = skewed(1000, dtype=np.float64)
    ref = prepare_LDS_weights(y64, show_plot=False)
    for lab in (list(y64), pd.Series(y64), torch.from_numpy(y64), y64[:, None], torch.from_numpy(y64)[:, None],
                pd.Series(y64).to_frame().to_numpy(), tuple(y64)):
        assert torch.equal(prepare_LDS_weights(lab, show_plot=False), ref)
    ro = y64.copy(); ro.flags.writeable = False
    assert torch.equal(prepare_LDS_weights(ro, show_plot=False), ref)
    assert torch.equal(prepare_LDS_weights(y64.astype('>f8'), show_plot=False), ref)
    # float32 labels are binned in float32: same as float64 for labels exactly representable in both
    y32 = y64.astype(np.float32)
    assert torch.equal(prepare_LDS_weights(y32, show_plot=False), prepare_LDS_weights(y32.astype(np.float64), show_plot=False))
    # strided views and half-precision labels (binned in float32, like their float32 values)
    t32 = torch.from_numpy(y32)
    assert torch.equal(prepare_LDS_weights(t32[::3], show_plot=False), prepare_LDS_weights(t32[::3].contiguous(), show_plot=False))
    for half in (torch.float16, torch.bfloat16):
        h = t32.to(half)
        assert torch.equal(prepare_LDS_weights(h, show_plot=False), prepare_LDS_weights(h.float(), show_plot=False))
    # the labels are not modified
    t = torch.from_numpy(y32.copy()); prepare_LDS_weights(t, show_plot=False); assert torch.equal(t, torch.from_numpy(y32))


def test_multi_target_and_bad_inputs():
    with pytest.raises(ValueError, match=r'labels.*\(n,\) or \(n, 1\)'): prepare_LDS_weights(np.ones((10, 2)), show_plot=False)
    with pytest.raises(ValueError, match='labels'): prepare_LDS_weights(np.ones((2, 2, 2)), show_plot=False)
    with pytest.raises(ValueError, match='labels'): prepare_LDS_weights(torch.tensor(1.), show_plot=False)
    with pytest.raises(ValueError, match='labels.*empty'): prepare_LDS_weights([], show_plot=False)
    with pytest.raises(ValueError, match='labels.*finite'): prepare_LDS_weights([1., math.nan, 2.], show_plot=False)
    with pytest.raises(ValueError, match='labels.*finite'): prepare_LDS_weights(torch.tensor([1., math.inf]), show_plot=False)
    with pytest.raises(ValueError, match='labels.*finite'):
        prepare_LDS_weights([1., math.nan], label_range=(0, 2), show_plot=False)
    with pytest.raises(TypeError, match='labels'): prepare_LDS_weights(['a', 'b'], show_plot=False)
    with pytest.raises(TypeError, match='labels'): prepare_LDS_weights(torch.tensor([True, False]), show_plot=False)
    with pytest.raises(TypeError, match='labels'): prepare_LDS_weights({1: 2}, show_plot=False)


@pytest.mark.parametrize('kw,exc,name', [
    (dict(n_bins=0), ValueError, 'n_bins'), (dict(n_bins=2.5), TypeError, 'n_bins'), (dict(n_bins=-3), ValueError, 'n_bins'),
    (dict(lds_ks=4), ValueError, 'lds_ks'), (dict(lds_ks=0), ValueError, 'lds_ks'), (dict(lds_ks=-3), ValueError, 'lds_ks'),
    (dict(lds_ks=3.0), TypeError, 'lds_ks'), (dict(lds_sigma=0), ValueError, 'lds_sigma'),
    (dict(lds_sigma=-1), ValueError, 'lds_sigma'), (dict(lds_kernel='box'), ValueError, 'lds_kernel'),
    (dict(reweight='log'), ValueError, 'reweight'), (dict(max_rel_weight=0.99), ValueError, 'max_rel_weight'),
    (dict(max_rel_weight=math.inf), ValueError, 'max_rel_weight'), (dict(label_range=(2, 1)), ValueError, 'label_range'),
    (dict(label_range=(1, 1)), ValueError, 'label_range'), (dict(label_range=(0, math.nan)), ValueError, 'label_range'),
    (dict(label_range=(0, math.inf)), ValueError, 'label_range'), (dict(label_range=(0, 1, 2)), ValueError, 'label_range'),
    (dict(label_range=5), ValueError, 'label_range'), (dict(label_range=('a', 1)), TypeError, 'label_range'),
    (dict(label_range=(1.0, 1.00000001)), ValueError, 'label_range')])  # empty in float32
def test_bad_parameters_name_themselves(kw, exc, name):
    y = skewed(100)
    with pytest.raises(exc, match=name): prepare_LDS_weights(y, show_plot=False, **kw)
    with pytest.raises(exc, match=name): lds_bins(y, **kw)


# --- kernel window ---------------------------------------------------------------------------------------

def paper_window(kernel, ks, sigma):
    "The paper's `get_lds_kernel_window`, written out with scipy (the reference the module must equal)"
    h = (ks - 1) // 2
    if kernel == 'gaussian':
        g = gaussian_filter1d(np.r_[np.zeros(h), 1., np.zeros(h)], sigma=sigma)
        return g / max(g)
    if kernel == 'triang': return triang(ks)
    lap = [np.exp(-abs(x) / sigma) / (2. * sigma) for x in np.arange(-h, h + 1)]
    return np.asarray(lap) / max(lap)


@pytest.mark.parametrize('ks,sigma', [(9, 1), (5, 1), (9, 2), (17, 2), (3, 0.5), (1, 1), (5, 2)])
def test_gaussian_window_is_scipys_and_the_analytic_one_an_option(ks, sigma):
    w = get_lds_kernel_window('gaussian', ks, sigma)
    np.testing.assert_array_equal(w, paper_window('gaussian', ks, sigma))
    assert w.max() == 1 and w[(ks - 1) // 2] == 1 and len(w) == ks and np.array_equal(w, w[::-1])
    k = np.arange(ks) - (ks - 1) // 2
    wa = get_lds_kernel_window('gaussian_analytic', ks, sigma)
    np.testing.assert_allclose(wa, np.exp(-k**2 / (2 * sigma**2)), rtol=1e-15)
    if int(4 * sigma + 0.5) <= (ks - 1) // 2: np.testing.assert_allclose(w, wa, rtol=1e-12)  # scipy's kernel fits: the same
    else: assert np.all(w[k != 0] > wa[k != 0])  # scipy reflects its tails back in: flatter


@pytest.mark.parametrize('kernel', ['gaussian', 'laplace'])
def test_windows_are_the_papers_on_a_grid(kernel):
    "Bit for bit the paper's window for every ks and sigma on a grid (scipy's reflected gaussian tails included)"
    sigmas = [0.05, 0.124, 0.125, 0.2, 0.37, 0.5, 0.75, 1, 1.2, 1.5, 2, 2.5, 3, 3.3, 4, 5, 8, 12.5, 30, 100, 1e3, 2e4]
    for ks in [1, 3, 5, 7, 9, 11, 13, 17, 25, 41, 101]:
        for sigma in sigmas:
            w = get_lds_kernel_window(kernel, ks, sigma)
            np.testing.assert_array_equal(w, paper_window(kernel, ks, sigma), err_msg=f'{kernel} ks={ks} sigma={sigma}')
            assert w.dtype == np.float64 and w.shape == (ks,) and w.max() == 1 and np.array_equal(w, w[::-1])


def test_paper_default_window_changes_the_weights():
    "The paper's own default (ks=5, sigma=2): reflected tails; weights differ from the analytic window's"
    y = skewed(5000, seed=9)
    assert not torch.equal(prepare_LDS_weights(y, lds_ks=5, lds_sigma=2, show_plot=False),
                           prepare_LDS_weights(y, lds_kernel='gaussian_analytic', lds_ks=5, lds_sigma=2, show_plot=False))
    assert 'gaussian_analytic(ks=5, sigma=2)' in repr(lds_bins(y, lds_kernel='gaussian_analytic', lds_ks=5, lds_sigma=2))


def test_gaussian_window_for_huge_sigmas_is_flat():
    "Beyond a radius of 2**20 taps the window is its flat limit; scipy's own result there is flat to within 3e-9 (ks 5) and 1e-12 (ks 9)"
    s = (2**20 - 0.5) / 4  # the largest sigma still computed tap by tap
    for ks in (5, 9):
        np.testing.assert_array_equal(get_lds_kernel_window('gaussian', ks, s), paper_window('gaussian', ks, s))
        np.testing.assert_allclose(paper_window('gaussian', ks, s), np.ones(ks), rtol=3e-9)
        np.testing.assert_array_equal(get_lds_kernel_window('gaussian', ks, 2**18 + 1), np.ones(ks))


@pytest.mark.parametrize('ks', [1, 3, 5, 9, 15])
def test_triang_and_laplace_windows(ks):
    np.testing.assert_array_equal(get_lds_kernel_window('triang', ks), triang(ks))
    k = np.abs(np.arange(ks) - (ks - 1) // 2)
    w = get_lds_kernel_window('laplace', ks, 1.5)
    np.testing.assert_allclose(w, np.exp(-k / 1.5), rtol=1e-15)
    assert w.max() == 1 and w.dtype == np.float64


def test_smoothing_is_scipys_convolve1d_bit_for_bit():
    "The smoothed counts are scipy's convolve1d(counts, window, mode='constant') exactly, as in the paper and tsai"
    y = skewed(30_000, seed=10)
    for kw in (dict(), dict(lds_ks=5, lds_sigma=2), dict(lds_kernel='triang', lds_ks=7), dict(lds_kernel='laplace', lds_ks=11, lds_sigma=3),
               dict(reweight='sqrt_inv', lds_ks=5, lds_sigma=2), dict(n_bins=300, lds_ks=21, lds_sigma=4)):
        b = lds_bins(y, **kw)
        c = b.counts.double().numpy()
        if kw.get('reweight') == 'sqrt_inv': c = np.sqrt(c)
        win = paper_window(kw.get('lds_kernel', 'gaussian'), kw.get('lds_ks', 9), kw.get('lds_sigma', 1))
        np.testing.assert_array_equal(b.smoothed.numpy(), convolve1d(c, win, mode='constant'))


# --- LDSBins object, devices, plots ----------------------------------------------------------------------

def test_ldsbins_api():
    y = torch.from_numpy(skewed(2000))
    b = lds_bins(y, n_bins=20)
    assert isinstance(b, LDSBins) and isinstance(b.lo, float) and isinstance(b.hi, float) and b.n_bins == 20
    assert b.weights.dtype == torch.float32 and b.weights.shape == (20,) and b.counts.shape == (20,) and b.smoothed.shape == (20,)
    assert abs((b.counts.double() * b.weights.double()).sum().item() / len(y) - 1) < 1e-6
    assert b.bin_index(y).dtype == torch.int64 and b.bin_index(y).shape == (2000,)
    assert torch.equal(b(y[:, None]), b(y)) and torch.equal(b(y.numpy()), b(y)) and torch.equal(b(y.tolist()), b(y))
    assert b.to('cpu') is b and torch.equal(b(y), prepare_LDS_weights(y, n_bins=20, show_plot=False))
    r = repr(b)
    assert r.startswith('LDSBins(n_bins=20') and "reweight='inv'" in r and 'gaussian(ks=9, sigma=1)' in r
    assert 'triang(ks=5)' in repr(lds_bins(y, lds_kernel='triang', lds_ks=5))
    # weights of new labels use the same table: out-of-range labels get the end bins' weights
    assert torch.equal(b(torch.tensor([-5., 1e6])), b.weights[[0, -1]])
    import copy, pickle
    assert torch.equal(pickle.loads(pickle.dumps(b))(y), b(y))
    before = b(y)
    c = copy.copy(b).to('meta')  # a moved copy leaves the original's tensors and cache alone
    assert c.weights.is_meta and c.counts.is_meta and b.weights.device.type == 'cpu' and torch.equal(b(y), before)


def test_show_plot_headless():
    import matplotlib.pyplot as plt
    y = skewed(500)
    n0 = len(plt.get_fignums())
    prepare_LDS_weights(y, show_plot=False)
    assert len(plt.get_fignums()) == n0
    fig, ax = plt.subplots()
    w = prepare_LDS_weights(y, n_bins=30, ax=ax)
    assert len(ax.patches) == 30 and len(ax.lines) == 1 and ax.get_legend() is not None
    assert len(fig.axes) == 2  # weights on a twin axis
    assert isinstance(w, torch.Tensor)
    prepare_LDS_weights(y, show_plot=True)  # a new figure, no blocking
    assert len(plt.get_fignums()) == n0 + 2
    ax2 = lds_bins(y, reweight='sqrt_inv').plot(weights=False)
    assert 'sqrt(counts)' in [t.get_text() for t in ax2.get_legend().get_texts()]
    fig.savefig(__import__('io').BytesIO(), format='png')


@cuda
def test_cuda_labels_stay_on_device():
    y = torch.from_numpy(skewed(100_000)).cuda()
    w = prepare_LDS_weights(y, show_plot=False)
    assert w.device == y.device and w.dtype == torch.float32
    torch.testing.assert_close(w.cpu(), prepare_LDS_weights(y.cpu(), show_plot=False), rtol=1e-6, atol=0)
    b = lds_bins(y)
    assert b.weights.device == y.device and torch.equal(b(y), w)
    assert torch.equal(b.bin_index(y).cpu(), b.bin_index(y.cpu()))
    assert b.to('cpu')(y).device == y.device


@cuda
def test_cuda_every_dtype_and_non_finite_lookups():
    "On the GPU: each dtype's binning gives the CPU's bins; lookups (binary search and rule) agree and give NaN for NaN/inf"
    rng = np.random.default_rng(17)
    for dtype in ('float32', 'float64', 'int64', 'int32'):
        base = rng.lognormal(3, 0.4, 200_000)
        y = np.clip(base, 0, 250).round().astype(dtype) if dtype.startswith('int') else base.astype(dtype)
        yc = torch.from_numpy(y).cuda()
        b, bc = lds_bins(y), lds_bins(yc)
        assert torch.equal(bc.counts.cpu(), b.counts) and torch.equal(bc.bin_index(yc).cpu(), b.bin_index(y))
        w = prepare_LDS_weights(yc, show_plot=False)
        assert w.device == yc.device and torch.equal(w, bc(yc)) and torch.equal(w, bc._weigh(yc))
        torch.testing.assert_close(w.cpu(), prepare_LDS_weights(y, show_plot=False), rtol=1e-6, atol=0)
    probe = torch.tensor([1., math.nan, math.inf, -math.inf, 20.], device='cuda')
    w = bc(probe)
    assert torch.isnan(w[1:4]).all() and torch.isfinite(w[[0, 4]]).all()
    assert torch.equal(w[[0, 4]], bc._weigh(probe)[[0, 4]]) and torch.isnan(bc._weigh(probe)[1:4]).all()


# --- properties (hypothesis) -----------------------------------------------------------------------------

_labels = st.lists(st.integers(-400, 400), min_size=1, max_size=200).map(lambda v: np.array(v, dtype=np.float32) / 8)
# the same examples every run, none stored: a property test never fails at random nor writes `.hypothesis/` into the repository
_cfg = dict(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)


@settings(**_cfg)
@given(_labels, st.sampled_from(['inv', 'sqrt_inv']), st.sampled_from(LDS_KERNELS),
       st.sampled_from([None, 1, 5, 40]), st.sampled_from([None, 2.0, 50.0]))
def test_prop_weights_finite_positive_mean_one(y, reweight, kernel, n_bins, mrw):
    w = prepare_LDS_weights(y, n_bins=n_bins, reweight=reweight, lds_kernel=kernel, max_rel_weight=mrw, show_plot=False)
    assert w.shape == (len(y),) and torch.isfinite(w).all() and (w > 0).all()
    assert abs(w.double().mean().item() - 1) < 1e-5
    if mrw is not None: assert (w.max() / w.min()).item() <= mrw * (1 + 1e-5)


@settings(**_cfg)
@given(_labels, st.randoms(use_true_random=False), st.sampled_from([None, 7]))
def test_prop_permuting_labels_permutes_weights(y, rnd, n_bins):
    perm = np.arange(len(y)); rnd.shuffle(perm)
    w = prepare_LDS_weights(y, n_bins=n_bins, show_plot=False)
    assert torch.equal(prepare_LDS_weights(y[perm], n_bins=n_bins, show_plot=False), w[torch.from_numpy(perm)])


@settings(**_cfg)
@given(_labels, st.integers(-1000, 1000), st.integers(-3, 3), st.sampled_from([None, 9]),
       st.tuples(st.integers(-60, 0), st.integers(1, 60)))
def test_prop_shift_and_scale_with_label_range(y, shift, log2_scale, n_bins, rng8):
    "Shift by an integer and scale by a power of two (exact in float32): same bins, same weights"
    s = 2.0 ** log2_scale
    lr = (rng8[0] / 8, rng8[1] / 8)
    w = prepare_LDS_weights(y, n_bins=n_bins, label_range=lr, show_plot=False)
    y2 = ((y + shift) * s).astype(np.float32)
    lr2 = ((lr[0] + shift) * s, (lr[1] + shift) * s)
    assert torch.equal(prepare_LDS_weights(y2, n_bins=n_bins, label_range=lr2, show_plot=False), w)


@settings(**_cfg)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=100), st.integers(1, 300),
       st.sampled_from([np.float32, np.float64]))
def test_prop_bin_index_is_searchsorted_on_edges(vals, n_bins, dtype):
    "Any finite labels, any number of bins: the fast rule equals a direct per-sample search on the documented edges"
    y = np.array(vals, dtype=dtype)
    b = lds_bins(y, n_bins=n_bins)
    e = b.edges.numpy()
    probes = np.concatenate([y, e, np.nextafter(e, -np.inf)]).astype(dtype)
    direct = np.clip(np.searchsorted(e[1:-1], probes, side='right'), 0, b.n_bins - 1)
    np.testing.assert_array_equal(b.bin_index(probes).numpy(), direct)
    rule = np.clip(np.floor((probes - dtype(b.lo)) * dtype(b.scale)), 0, b.n_bins - 1)  # the documented rule, per sample
    np.testing.assert_array_equal(direct, rule)
    np.testing.assert_array_equal(b.counts.numpy(), np.bincount(direct[:len(y)], minlength=b.n_bins))
    ideal = b.lo + (b.hi - b.lo) * np.arange(b.n_bins + 1) / b.n_bins
    assert np.all(np.abs(e.astype(np.float64) - ideal) <= 8 * np.spacing(dtype(max(abs(b.lo), abs(b.hi)))))


def test_cpu_passes_restore_the_thread_setting():
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y = torch.from_numpy(skewed(100_000))
        b = lds_bins(y); prepare_LDS_weights(y, show_plot=False); b(y); b.bin_index(y)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError): prepare_LDS_weights(torch.full((100_000,), math.nan), show_plot=False)
        assert torch.get_num_threads() == 2  # also after an error
    finally: torch.set_num_threads(n0)


def test_cpu_passes_leave_other_threads_alone():
    "OpenMP's thread count is per thread: two threads binning at once, each gets its own setting back"
    from tsai_cbs.lds import _cpu_one_thread
    y = torch.zeros(100_000)
    entered, inner, left, res = threading.Event(), threading.Event(), threading.Event(), {}
    # torch keeps a thread's count from its first read or parallel op on; before that, a thread takes the count another
    # thread set last (even over its own `set_num_threads`): each thread reads its own before the other changes anything
    ready = threading.Barrier(2, timeout=30)
    def own(n): torch.set_num_threads(n); torch.get_num_threads(); ready.wait()
    def first():  # enters first, leaves while `second` is still inside
        own(2)
        with _cpu_one_thread(y): entered.set(); inner.wait(30)
        res['first'] = torch.get_num_threads(); left.set()
        prepare_LDS_weights(torch.from_numpy(skewed(100_000)), show_plot=False)
        res['first_public'] = torch.get_num_threads()
    def second():
        own(2); entered.wait(30)
        with _cpu_one_thread(y): inner.set(); left.wait(30)
        res['second'] = torch.get_num_threads()
    n0 = torch.get_num_threads()
    try:
        ts = [threading.Thread(target=f) for f in (first, second)]
        for t in ts: t.start()
        for t in ts: t.join(60)
        assert res == dict(first=2, second=2, first_public=2)
        assert torch.get_num_threads() == n0
    finally: torch.set_num_threads(n0)


def test_weights_are_float32_whatever_the_default_dtype():
    "A user's torch.set_default_dtype(torch.float64) changes nothing: float32 weights, the same values"
    y = torch.from_numpy(skewed(4_500_000, seed=7))  # several CPU chunks: the in-place result path
    ref, b = prepare_LDS_weights(y, show_plot=False), lds_bins(y[:5000])
    ref_small = b(y[:5000])
    d0 = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        w = prepare_LDS_weights(y, show_plot=False)
        assert w.dtype == torch.float32 and torch.equal(w, ref)
        assert b(y[:5000]).dtype == torch.float32 and torch.equal(b(y[:5000]), ref_small)
        assert torch.equal(lds_bins(y[:5000])(y[:5000]), ref_small)
    finally: torch.set_default_dtype(d0)


@pytest.mark.parametrize('sigma', [1e-300, 1e-160, 1e160, 1e300])
def test_extreme_sigmas_give_the_limit_windows(sigma):
    "A sigma far below a bin is no smoothing, far above is a flat window: finite weights, no overflow"
    for kernel in ('gaussian', 'laplace'):
        w = get_lds_kernel_window(kernel, 9, sigma)
        np.testing.assert_array_equal(w, np.eye(9)[4] if sigma < 1 else np.ones(9))
    y = skewed(1000)
    for kernel in ('gaussian', 'laplace'):
        w = prepare_LDS_weights(y, n_bins=20, lds_kernel=kernel, lds_sigma=sigma, show_plot=False)
        assert torch.isfinite(w).all() and (w > 0).all()
        if sigma < 1: assert torch.equal(w, prepare_LDS_weights(y, n_bins=20, lds_ks=1, show_plot=False))  # no smoothing


def test_ranges_beyond_the_compute_dtype_are_refused():
    "max - min must fit the compute dtype: else y - lo overflows and labels inside the range land in the last bin"
    y32 = np.array([3e38, -3e38, 0.5e38], dtype=np.float32)
    with pytest.raises(ValueError, match=r'labels.*float32.*float64'): prepare_LDS_weights(y32, show_plot=False)
    with pytest.raises(ValueError, match='labels'): lds_bins(np.array([1.7e308, -1.7e308, 0.]))
    with pytest.raises(ValueError, match='label_range'):
        prepare_LDS_weights(np.array([0., 1.], dtype=np.float32), label_range=(-1e39, 1e39), show_plot=False)
    with pytest.raises(ValueError, match='label_range'): lds_bins(np.array([0., 1.]), label_range=(-1.7e308, 1.7e308))
    # the same labels as float64 are binned as documented
    b = lds_bins(y32.astype(np.float64), n_bins=6)
    assert b.bin_index(y32.astype(np.float64)).tolist() == [5, 0, 3]


def test_huge_page_advice_is_optional(monkeypatch):
    "Where there is no MADV_HUGEPAGE or no loadable libc (Windows: ctypes.CDLL(None) raises TypeError) the module still works"
    import ctypes, mmap
    import tsai_cbs.lds as lds
    def no_libc(*a, **k): raise TypeError('no libc here')
    monkeypatch.setattr(ctypes, 'CDLL', no_libc)
    assert lds._libc_madvise() is None
    monkeypatch.delattr(mmap, 'MADV_HUGEPAGE', raising=False)
    assert lds._libc_madvise() is None
    y = torch.from_numpy(skewed(4_500_000, seed=8))
    ref = prepare_LDS_weights(y, show_plot=False)
    monkeypatch.setattr(lds, '_madvise', None)
    assert torch.equal(prepare_LDS_weights(y, show_plot=False), ref)


# --- the paper's 'inverse' -------------------------------------------------------------------------------

def paper_agedb_weights(ages, reweight, kernel='gaussian', ks=5, sigma=2, max_target=121, clip=(5, 1000)):
    "The paper's `_prepare_weights` (AgeDB/IMDB-WIKI) with LDS, restated: integer bins 0..max_target-1, the top one taking all above"
    b = np.minimum(ages.astype(np.int64), max_target - 1)
    counts = np.bincount(b, minlength=max_target)  # int64
    if reweight == 'sqrt_inv': counts = np.sqrt(counts)
    elif reweight == 'inverse': counts = np.clip(counts, *clip)  # every bin, empty ones included; still integers
    smoothed = convolve1d(counts, paper_window(kernel, ks, sigma), mode='constant')  # integer in, integer out: truncated
    w = np.array([np.float32(1 / x) for x in smoothed[b]])
    return w * (len(w) / np.sum(w))


@pytest.mark.parametrize('reweight', ['inverse', 'sqrt_inv'])
@pytest.mark.parametrize('kernel,ks,sigma', [('gaussian', 5, 2), ('gaussian', 9, 1), ('triang', 5, 1), ('laplace', 5, 2)])
def test_paper_reweighting_on_integer_ages(reweight, kernel, ks, sigma):
    "The paper's 'inverse' (counts clipped to [5, 1000], integer smoothing) and 'sqrt_inv', with its bins: ages 0..120"
    rng = np.random.default_rng(11)
    ages = np.clip(np.r_[rng.normal(35, 9, 20_000), rng.normal(70, 6, 400), rng.uniform(0, 118, 30)], 0, 130).astype(np.int64)
    w = prepare_LDS_weights(ages, n_bins=121, label_range=(-0.5, 120.5), reweight=reweight, lds_kernel=kernel, lds_ks=ks,
                            lds_sigma=sigma, show_plot=False)
    ref = paper_agedb_weights(ages, reweight, kernel, ks, sigma)
    np.testing.assert_allclose(w.numpy(), ref, rtol=2e-6)
    if reweight == 'inverse':
        b = lds_bins(ages, n_bins=121, label_range=(-0.5, 120.5), reweight='inverse', lds_kernel=kernel, lds_ks=ks, lds_sigma=sigma)
        assert torch.equal(b.smoothed, b.smoothed.trunc()) and b.smoothed.min().item() >= 5  # integers, from counts >= 5
        assert 'inverse_clip=(5, 1000)' in repr(b)


def test_inverse_clip_and_how_inv_differs():
    "'inv' is the unclipped, untruncated inverse; 'inverse' the paper's; the clip range is a parameter"
    rng = np.random.default_rng(12)
    ages = np.r_[rng.integers(20, 60, 50_000), rng.integers(80, 100, 40)]
    kw = dict(n_bins=121, label_range=(-0.5, 120.5), lds_ks=5, lds_sigma=2, show_plot=False)
    inv, paper = prepare_LDS_weights(ages, **kw), prepare_LDS_weights(ages, reweight='inverse', **kw)
    rare, common = ages >= 80, ages < 60
    # the paper caps each count at 1000 before smoothing: the rare-to-common ratio is much smaller than with 'inv'
    assert (inv[rare].max() / inv[common].min()) > 3 * (paper[rare].max() / paper[common].min())
    np.testing.assert_allclose(prepare_LDS_weights(ages, reweight='inverse', inverse_clip=(1, 10), **kw).numpy(),
                               paper_agedb_weights(ages, 'inverse', clip=(1, 10)), rtol=2e-6)
    # no clipping at all: 'inverse' smooths as 'inv' does, then truncates (the paper's integer arithmetic)
    kb = dict(n_bins=121, label_range=(-0.5, 120.5), lds_ks=5, lds_sigma=2)
    assert torch.equal(lds_bins(ages, reweight='inverse', inverse_clip=(0, math.inf), **kb).smoothed, lds_bins(ages, **kb).smoothed.trunc())
    for bad in [(5,), (10, 5), (-1, 5), ('a', 5), (math.nan, 5), 5]:
        with pytest.raises((ValueError, TypeError), match='inverse_clip'): prepare_LDS_weights(ages, reweight='inverse', inverse_clip=bad, show_plot=False)


# --- dtypes, index widths, chunks: the same bins as the rule ---------------------------------------------------

@pytest.mark.parametrize('dtype', ['float32', 'float64', 'int64', 'int32', 'int16', 'uint8', 'float16'])
@pytest.mark.parametrize('kw', [dict(), dict(n_bins=40), dict(n_bins=300), dict(n_bins=40_000), dict(label_range=(20, 60), n_bins=17)])
def test_every_dtype_bins_like_the_rule(dtype, kw):
    "Each dtype's fast path (integer arithmetic, narrow stored indices, several chunks) gives the documented rule's bins and weights"
    rng = np.random.default_rng(13)
    n = 300_000  # several CPU chunks
    base = rng.lognormal(3, 0.4, n)
    y = np.clip(base, 0, 250).round().astype(dtype) if dtype in ('int64', 'int32', 'int16', 'uint8') else base.astype(dtype)
    b = lds_bins(y, **kw)
    w = prepare_LDS_weights(y, show_plot=False, **kw)
    assert torch.equal(w, b(y))  # the stored-index path against the rule's lookup, bit for bit
    e = b.edges.numpy()
    yc = torch.from_numpy(y).to(b.dtype).numpy()  # the labels in the compute dtype
    idx = np.clip(np.floor((yc - e.dtype.type(b.lo)) * e.dtype.type(b.scale)), 0, b.n_bins - 1).astype(np.int64)
    np.testing.assert_array_equal(b.bin_index(y).numpy(), idx)
    np.testing.assert_array_equal(b.counts.numpy(), np.bincount(idx, minlength=b.n_bins))
    np.testing.assert_array_equal(w.numpy(), b.weights.numpy()[idx])
    if dtype in ('int64', 'int32', 'int16', 'uint8') and not kw: assert b.scale == 1.0 and b.lo == y.min() - 0.5  # one bin per integer


def test_integer_labels_beyond_int32():
    "int64 labels too large for int32 indices arithmetic: computed in int64, same bins"
    y = np.r_[np.arange(3_000_000_000, 3_000_000_500), np.full(200_000, 3_000_000_007)].astype(np.int64)
    b = lds_bins(y)
    assert b.n_bins == 500 and b.lo == 3_000_000_000 - 0.5
    assert torch.equal(prepare_LDS_weights(y, show_plot=False), b(y))
    np.testing.assert_array_equal(b.bin_index(y).numpy(), y - 3_000_000_000)


# --- lookups: NaN and inf, the fast path against the rule ----------------------------------------------------

@pytest.mark.parametrize('n', [100, 50_000, 300_000])
def test_non_finite_labels_get_nan_weights(n):
    "A NaN or ±inf label has no bin: NaN weight (whatever the path: binary search for small inputs, the chunked rule for large)"
    y = skewed(5000, seed=14)
    b = lds_bins(y, label_range=(0.5, 4), n_bins=12)
    probe = torch.from_numpy(skewed(n, seed=15))
    probe[::7] = math.nan; probe[1::11] = math.inf; probe[2::13] = -math.inf
    w = b(probe)
    bad = ~torch.isfinite(probe)
    assert torch.isnan(w[bad]).all() and torch.isfinite(w[~bad]).all()
    assert torch.equal(w[~bad], b(probe[~bad]))
    assert torch.equal(w[~bad], b.weights[b.bin_index(probe[~bad])])
    assert b.bin_index(torch.tensor([math.nan, math.inf, -math.inf])).tolist() == [0, 11, 0]  # the rule itself is unchanged


@pytest.mark.parametrize('table_dtype,label_dtype', [(np.float32, torch.float32), (np.float64, torch.float32),
                                                     (np.float32, torch.float64), (np.float64, torch.float64),
                                                     (np.float32, torch.float16), (np.int64, torch.float32), (np.int64, torch.int64)])
def test_binary_search_lookup_equals_the_rule(table_dtype, label_dtype):
    "The per-batch lookup (bucketize over exact edges for the labels' dtype) gives the rule's weight for every probe"
    from tsai_cbs.lds import _FAST_CPU
    src = skewed(20_000, seed=16, dtype=np.float64) * 40
    b = lds_bins(src.astype(table_dtype) if table_dtype != np.int64 else src.round().astype(np.int64), n_bins=None if table_dtype == np.int64 else 37)
    lab = torch.from_numpy(src).to(label_dtype) if label_dtype != torch.int64 else torch.from_numpy(src.round().astype(np.int64))
    e = b.edges
    probes = torch.cat([lab[:3000].double(), e, torch.from_numpy(np.nextafter(e.numpy(), -np.inf)), torch.tensor([-1e300, 1e300, 0., -0.])]).to(label_dtype)
    assert len(probes) <= _FAST_CPU
    fast = b._lookup(probes)
    ref = b.weights[b.bin_index(probes)]  # the rule
    fin = torch.isfinite(probes.double()) if probes.is_floating_point() else torch.ones(len(probes), dtype=torch.bool)
    assert torch.equal(fast[fin], ref[fin]) and torch.isnan(fast[~fin]).all()
    # float32 probes just around every float32 edge of a float64 table
    if label_dtype == torch.float32 and table_dtype == np.float64:
        e32 = b._edges_in(torch.float32)
        near = torch.cat([e32, torch.from_numpy(np.nextafter(e32.numpy(), -np.inf))])
        assert torch.equal(b._lookup(near), b.weights[b.bin_index(near)])
        assert torch.equal(b.bin_index(e32), torch.arange(1, b.n_bins))  # each edge is the first float32 of its bin


# --- standalone ----------------------------------------------------------------------------------------------

def test_import_is_standalone():
    "`import tsai_cbs.lds` pulls in neither fastai nor scipy, pandas or matplotlib (checked in a fresh interpreter)"
    import subprocess, sys, json
    code = ("import sys, json, tsai_cbs.lds; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'fastai', 'fastcore', 'scipy', 'pandas', 'matplotlib', 'sklearn'})))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _ages(n, seed=0, lo=0):
    return np.clip(np.round(np.exp(np.random.default_rng(seed).normal(3.5, 0.35, n))), 0, 120).astype(np.int64) + lo

@pytest.mark.parametrize('labels, kw', [
    (lambda: skewed(300_000), {}),                                        # float32, 2-byte indices
    (lambda: skewed(300_000, dtype=np.float64), {}),                      # float64
    (lambda: skewed(300_000, dtype=np.float64), dict(n_bins=40_000)),    # 4-byte indices: the lookup all side by side
    (lambda: skewed(300_000), dict(n_bins=50, label_range=(1, 5))),       # 1-byte indices, clipped
    (lambda: _ages(300_000), {}),                                         # integers stored as they are
    (lambda: _ages(300_000).astype(np.int32), {}),
    (lambda: _ages(300_000, lo=-1000), {}),                               # integers with an offset
    (lambda: _ages(300_000).astype(np.float64), {}),                      # integer-valued floats
])
def test_passes_on_several_threads_equal_one_thread(monkeypatch, labels, kw):
    "The passes split over threads (small pieces here, so every phase of the in-place lookup runs) give the same bins, counts and weights bit for bit"
    import tsai_cbs.lds as lds
    y = torch.from_numpy(labels())
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        w1, b1 = prepare_LDS_weights(y, show_plot=False, **kw), lds_bins(y, **kw)
        monkeypatch.setattr(lds, '_PIECE', 1 << 12)
        seen = set()
        orig = lds._pass_map
        def spy(fn, end, start=0):
            def rec(a, b): seen.add(threading.current_thread().name); return fn(a, b)
            return orig(rec, end, start)
        monkeypatch.setattr(lds, '_pass_map', spy)
        torch.set_num_threads(3)
        w3, b3 = prepare_LDS_weights(y, show_plot=False, **kw), lds_bins(y, **kw)
        assert torch.get_num_threads() == 3
    finally: torch.set_num_threads(n0)
    assert len({s for s in seen if s.startswith('tsai_cbs_lds')}) > 1  # really on several threads
    assert torch.equal(w1, w3) and torch.equal(b1.counts, b3.counts) and torch.equal(b1.weights, b3.weights)
    assert (b1.lo, b1.hi, b1.n_bins, b1.scale) == (b3.lo, b3.hi, b3.n_bins, b3.scale)


def test_passes_on_several_threads_after_a_fork():
    "A child forked after the pass threads started (a DataLoader worker, say) gets threads of its own instead of waiting for its parent's"
    import multiprocessing as mp
    if 'fork' not in mp.get_all_start_methods(): pytest.skip('no fork on this platform')
    import tsai_cbs.lds as lds
    y = torch.from_numpy(skewed(3 * lds._PIECE))
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        w = prepare_LDS_weights(y, show_plot=False)
        assert lds._pool is not None
        ctx = mp.get_context('fork')
        q = ctx.Queue()
        p = ctx.Process(target=_weights_in_child, args=(y, q))
        p.start()
        try: got = q.get(timeout=120)
        finally: p.join(30); p.kill()
    finally: torch.set_num_threads(n0)
    assert torch.equal(torch.from_numpy(got), w)

def _weights_in_child(y, q):
    torch.set_num_threads(2)
    q.put(prepare_LDS_weights(y, show_plot=False).numpy())
