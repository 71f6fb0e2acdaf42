"`from tsai_cbs.all import *`: the callbacks and their user-facing functions, every one documented, no fastai/fastcore name replaced."
import ast, importlib, importlib.util, inspect, json, re, sys
from pathlib import Path
import pytest
from fastai.callback.core import Callback
import tsai_cbs.all as A

ROOT = Path(__file__).resolve().parent.parent
# tsai's `tsai.callback.core.__all__` (tsai 1.0.1); a user replaces `from tsai.callback.core import *` by ours
TSAI_NAMES = ['ShowGraphCallback2', 'TransformScheduler', 'ShowGraph', 'SaveModel', 'get_lds_kernel_window',
              'prepare_LDS_weights', 'WeightedPerSampleLoss', 'BatchSubsampler']
FASTAI_NAMESPACES = ['fastai.basics', 'fastai.callback.all', 'fastai.data.all', 'fastai.vision.all', 'fastai.tabular.all',
                     'fastai.collab', 'fastcore.all', 'fastai.distributed']

def _fastai_namespace():
    ns, done = {}, []
    for m in FASTAI_NAMESPACES:
        try: importlib.import_module(m)
        except ImportError: continue  # e.g. fastai.distributed without `accelerate`
        exec(f'from {m} import *', ns)
        done.append(m)
    return ns, done

def test_no_fastai_or_fastcore_name_replaced():
    ns, done = _fastai_namespace()
    assert 'fastai.basics' in done and 'fastcore.all' in done
    before = dict(ns)
    exec('from tsai_cbs.all import *', ns)
    replaced = sorted(n for n in before if ns[n] is not before[n])
    assert not replaced, f"`from tsai_cbs.all import *` replaces fastai/fastcore names: {replaced}"
    # the defect that was found: fastcore's `atomic_save` context manager, still usable after our import
    from fastcore.xtras import atomic_save
    assert ns['atomic_save'] is atomic_save

def test_helpers_are_not_exported():
    for n in ['atomic_save', 'atomic_write', 'get_rng_state', 'set_rng_state', 'check_type', 'check_number', 'check_choice',
              'check_pct', 'as_number_vector', 'is_rank0', 'distrib_barrier', 'distrib_initialized', 'broadcast_object',
              'inner_dl', 'StateKeeper', 'on_fit_end', 'is_training_fit', 'warn0', 'live_display', 'figure_path', 'show_figure']:
        assert n not in A.__all__, n
    ns = {}
    exec('from tsai_cbs.all import *', ns)
    assert set(ns) - {'__builtins__'} == set(A.__all__)

def test_tsai_names_kept():
    missing = [n for n in TSAI_NAMES if n not in A.__all__]
    assert not missing, missing
    assert A.ShowGraphCallback2 is A.ShowGraph
    spec = importlib.util.find_spec('tsai')
    if spec is None: return
    # tsai's own list, read from its source (importing tsai.callback.core would import most of tsai)
    src = (Path(spec.origin).parent/'callback'/'core.py').read_text()
    tree = ast.parse(src)
    tsai_all = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', None) == '__all__')
    assert set(tsai_all) <= set(A.__all__), set(tsai_all) - set(A.__all__)

def test_every_callback_exported():
    import pkgutil, tsai_cbs
    cbs = set()
    for mi in pkgutil.iter_modules(tsai_cbs.__path__):
        if mi.name.startswith('_') or mi.name in ('all', 'testing', 'demo'): continue
        m = importlib.import_module(f'tsai_cbs.{mi.name}')
        cbs |= {n for n in getattr(m, '__all__', []) if inspect.isclass(getattr(m, n)) and issubclass(getattr(m, n), Callback)}
    assert cbs and cbs <= set(A.__all__), cbs - set(A.__all__)

def _notebook(mod):
    "The notebook a module is exported from (nbdev's header line)"
    src = Path(inspect.getfile(mod)).read_text()
    return ROOT/'nbs'/re.search(r'File to edit: \.\./nbs/(\S+\.ipynb)', src).group(1)

def _documents(nb_path, name):
    "True when the notebook shows `name`'s docs (`show_doc(name)`) or its prose names it in backticks"
    nb = json.loads(nb_path.read_text())
    for c in nb['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'code' and re.search(rf'^show_doc\({re.escape(name)}\b', s, re.M): return True
        if c['cell_type'] == 'markdown' and f'`{name}`' in s: return True
    return False

@pytest.mark.parametrize('name', A.__all__)
def test_exported_name_is_documented(name):
    obj = getattr(A, name)
    mod = A if name == 'ShowGraphCallback2' else sys.modules[getattr(obj, '__module__', None) or A.__name__]
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):  # a constant: documented where it is defined
        mod = next(m for m in A._modules if name in m.__all__)
    else: assert inspect.getdoc(obj), f"{name} has no docstring"
    assert mod.__name__.startswith('tsai_cbs.'), (name, mod)
    nb = _notebook(mod)
    assert _documents(nb, name), f"{name} is exported by tsai_cbs.all but {nb.name} neither shows its docs nor explains it"


def test_every_callback_looks_up_missing_hooks_in_one_step():
    "Each exported callback derives from `core._QuickHooks`: fastai asks every callback for every event, and a missing one must not be searched for on the Learner and its model"
    import tsai_cbs.all as A
    from fastai.callback.core import Callback
    from tsai_cbs.core import _QuickHooks
    cbs = [v for k, v in vars(A).items() if isinstance(v, type) and issubclass(v, Callback) and v.__module__.startswith('tsai_cbs')]
    assert len(cbs) >= 10 and [c.__name__ for c in cbs if not issubclass(c, _QuickHooks)] == []
    from fastai.callback.core import _events
    asked = []
    class Spy:  # stands in for the Learner: records what the callback asks of it
        def __getattr__(self, k): asked.append(k); raise AttributeError(k)
    cb = A.StopAfter(max_epochs=1)
    cb.learn = Spy()
    missing = [e for e in _events if not callable(getattr(type(cb), e, None))]
    assert len(missing) > 15 and not any(hasattr(cb, e) for e in missing) and asked == []
    assert not hasattr(cb, 'no_such_name') and asked == ['no_such_name']  # other names still go to the Learner
