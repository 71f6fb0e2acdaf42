"The CPU stand-in for a GPU sync check, shared by the tests of the per-batch callbacks"
import torch
from torch.overrides import TorchFunctionMode

class HostReads(TorchFunctionMode):
    "Record the tensor ops that, on a GPU, make the host wait for the device: values read back, data-dependent shapes"
    NAMES = {'item', 'tolist', 'numpy', '__array__', '__bool__', '__int__', '__float__', '__index__', 'cpu', 'nonzero',
             'unique', 'unique_consecutive', 'masked_select', 'argwhere'}
    def __init__(self): super().__init__(); self.seen = []
    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', str(func))
        if name in self.NAMES: self.seen.append(name)
        elif name in ('__getitem__', '__setitem__') and any(isinstance(a, torch.Tensor) and a.dtype == torch.bool
                                                            for a in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            self.seen.append(f'{name}[bool mask]')
        return func(*args, **(kwargs or {}))
