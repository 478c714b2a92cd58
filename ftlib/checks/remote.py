"""Checks across a process boundary: the learner's code runs in their kernel, the verdict elsewhere.

`ftlib grade` never decides points in the interpreter that ran a learner's code: there,
the learner can change anything (the checks, ``builtins``, IPython's input transformers).
A grade cell runs instead in the grading process, the *judge*, where every name the
notebook defined is a :class:`Remote`. Calling one sends the call to the learner's
kernel, and only data comes back: JSON with tagged NumPy arrays and tensors (`encode`,
`decode`), never pickle. An object that is not data stays in the kernel, and the judge
gets a `Remote` handle to it (``stopper = EarlyStopping(); stopper.step(0.5)`` works).

A check whose exercise takes objects that cannot travel as data (a model, a tokenizer)
splits in two: a *probe*, a module-level function that builds fresh inputs, calls the
learner's function on them and returns what it observed as data, and the rest of the
check, which runs the reference and compares. :func:`observe` runs the probe where the
learner's code lives: in this process for ``ftlib check`` and the tests, in the kernel
(through the `Remote`) when grading. Either way its result goes through `encode` and
`decode`, so both paths see the same types.

What a hostile kernel can do is therefore limited to what it sends back: data that must
match the reference on the check's inputs. It can make its own function report anything
(a mode, a flag), but it cannot change the checks, the reference or the comparison.

`serve` is the kernel's side: one JSON request in, one JSON reply out. Standard library,
NumPy and (when installed) torch only.
"""
from __future__ import annotations

import base64
import builtins
import importlib
import json
import sys
from typing import Any, Callable

import numpy as np

__all__ = ["Remote", "RemoteError", "Channel", "LoopbackChannel", "observe", "encode", "decode", "serve",
           "MAX_REPLY_BYTES"]

MAX_REPLY_BYTES = 256 * 2**20  # a reply larger than this is refused, not parsed
_MAX_DEPTH = 64  # nesting of lists and dicts in one value
_ND_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
              "float32", "float64"}
_TORCH_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")
# Exceptions a learner's code may raise that the judge re-raises as themselves: the built-in ones.
_BUILTIN_ERRORS = {name: cls for name, cls in vars(builtins).items()
                   if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins"}
# Of a Remote, only these attributes are asked of the kernel among the double-underscore names.
_REMOTE_DUNDERS = {"__name__", "__qualname__", "__module__", "__doc__"}


class RemoteError(Exception):
    """The learner's code raised an exception the judge does not re-create (named in the message)."""


class ProtocolError(Exception):
    """The kernel's reply was not a well-formed answer: the kernel, not a check, failed."""


# --------------------------------------------------------------------------- the data format

def _torch():
    return sys.modules.get("torch")


def encode(value: Any, *, handle: Callable[[Any], int] | None = None, _depth: int = 0) -> Any:
    """``value`` as JSON-able data: exact built-in types, tagged containers, arrays and tensors.

    Anything else becomes a handle (``handle(obj)`` gives its number) or, without
    ``handle``, a `TypeError`. Subclasses of ``int``, ``float``, ``str``, ``list`` and
    ``dict`` are not data: they are what a learner would use to fake an answer.
    """
    if _depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels")
    t = type(value)
    if value is None or t in (bool, int, str):
        return value
    if t is float:
        return value if value == value and value not in (float("inf"), float("-inf")) else {"$": "float", "v": repr(value)}
    if t is list:
        return [encode(v, handle=handle, _depth=_depth + 1) for v in value]
    if t is tuple:
        return {"$": "tuple", "v": [encode(v, handle=handle, _depth=_depth + 1) for v in value]}
    if t is dict:
        return {"$": "dict", "v": [[encode(k, handle=handle, _depth=_depth + 1),
                                    encode(v, handle=handle, _depth=_depth + 1)] for k, v in value.items()]}
    if t is bytes:
        return {"$": "bytes", "v": base64.b64encode(value).decode("ascii")}
    if t is np.ndarray or isinstance(value, np.generic) and type(value).__module__ == "numpy":
        arr = np.asarray(value)
        if arr.dtype.name in _ND_DTYPES:
            return {"$": "nd", "dtype": arr.dtype.name, "shape": list(arr.shape), "scalar": t is not np.ndarray,
                    "v": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")}
    torch = _torch()
    if torch is not None and t in (torch.Tensor, torch.nn.Parameter):
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype in _TORCH_DTYPES and value.layout == torch.strided:
            flat = value.detach().cpu().contiguous()
            raw = (flat.view(torch.int16) if dtype == "bfloat16" else flat).numpy().tobytes()
            return {"$": "tensor", "dtype": dtype, "shape": list(value.shape), "parameter": t is torch.nn.Parameter,
                    "requires_grad": bool(value.requires_grad), "v": base64.b64encode(raw).decode("ascii")}
    if handle is None:
        raise TypeError(f"a {t.__name__} cannot be sent to the learner's kernel: only numbers, strings, "
                        "lists, tuples, dicts, NumPy arrays and tensors can")
    return {"$": "handle", "id": handle(value), "type": t.__name__}


def decode(data: Any, *, remote: Callable[[int, str], Any] | None = None, _depth: int = 0) -> Any:
    """The value `encode` described; a handle becomes ``remote(id, type_name)``.

    Builds nothing but built-in containers, NumPy arrays and tensors: no class named by
    the data is ever imported or instantiated.
    """
    if _depth > _MAX_DEPTH:
        raise ProtocolError(f"value nested deeper than {_MAX_DEPTH} levels")
    t = type(data)
    if data is None or t in (bool, int, str, float):
        return data
    if t is list:
        return [decode(v, remote=remote, _depth=_depth + 1) for v in data]
    if t is not dict or type(data.get("$")) is not str:
        raise ProtocolError(f"not a value of the grading format: {type(data).__name__}")
    tag = data["$"]
    if tag == "float" and data.get("v") in ("nan", "inf", "-inf"):
        return float(data["v"])
    if tag == "tuple" and type(data.get("v")) is list:
        return tuple(decode(v, remote=remote, _depth=_depth + 1) for v in data["v"])
    if tag == "dict" and type(data.get("v")) is list:
        out = {}
        for pair in data["v"]:
            if type(pair) is not list or len(pair) != 2:
                raise ProtocolError("a dict entry is not a [key, value] pair")
            key = decode(pair[0], remote=remote, _depth=_depth + 1)
            try:
                out[key] = decode(pair[1], remote=remote, _depth=_depth + 1)
            except TypeError:  # an unhashable key (a list, an array)
                raise ProtocolError("a dict key is not hashable") from None
        return out
    if tag == "bytes" and type(data.get("v")) is str:
        return base64.b64decode(data["v"], validate=True)
    if tag == "nd":
        return _decode_array(data)
    if tag == "tensor":
        return _decode_tensor(data)
    if tag == "handle" and type(data.get("id")) is int and remote is not None:
        return remote(data["id"], str(data.get("type", "object"))[:100])
    raise ProtocolError(f"unknown value tag {str(tag)[:40]!r}")


def _shape(data: dict) -> tuple[int, ...]:
    shape = data.get("shape")
    if type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 32:
        raise ProtocolError("an array's shape is not a list of sizes")
    return tuple(shape)


def _decode_array(data: dict) -> np.ndarray:
    if data.get("dtype") not in _ND_DTYPES or type(data.get("v")) is not str:
        raise ProtocolError(f"an array of dtype {str(data.get('dtype'))[:20]!r} is not data")
    shape = _shape(data)
    raw = base64.b64decode(data["v"], validate=True)
    dtype = np.dtype(data["dtype"])
    if len(raw) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ProtocolError("an array's bytes do not match its shape")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return arr[()] if data.get("scalar") is True and arr.ndim == 0 else arr


def _decode_tensor(data: dict):
    torch = _torch()
    if torch is None:
        import torch  # noqa: F811 (a tensor in a reply: torch is needed to hold it)
    dtype_name = data.get("dtype")
    if dtype_name not in _TORCH_DTYPES or type(data.get("v")) is not str:
        raise ProtocolError(f"a tensor of dtype {str(dtype_name)[:20]!r} is not data")
    shape = _shape(data)
    raw = base64.b64decode(data["v"], validate=True)
    dtype = getattr(torch, dtype_name)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) != itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ProtocolError("a tensor's bytes do not match its shape")
    if not raw:
        tensor = torch.empty(shape, dtype=dtype)
    elif dtype_name == "bfloat16":
        tensor = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(torch.bfloat16).reshape(shape)
    else:
        tensor = torch.from_numpy(np.frombuffer(raw, dtype=np.dtype(dtype_name)).copy()).reshape(shape)
    grad = data.get("requires_grad") is True and tensor.is_floating_point()
    if data.get("parameter") is True:
        return torch.nn.Parameter(tensor, requires_grad=grad)
    return tensor.requires_grad_(grad)


# --------------------------------------------------------------------------- the judge's side

class Channel:
    """The judge's end of the conversation with one learner kernel.

    Subclasses implement ``_send(request_text) -> reply_text``; this class builds the
    requests and turns replies into values or exceptions. ``origins`` records, for each
    name resolved, the module the kernel says its object comes from (``ftlib.models``
    for a learner who hands in ftlib's own function): a hint for the instructor, no proof.
    """

    origins: dict

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.origins = {}
        return self

    def _send(self, text: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def ask(self, request: dict) -> Any:
        """Send one request; return the decoded answer or raise what the learner's code raised."""
        answer = self._answer(request)
        try:
            return decode(answer, remote=lambda i, name: Remote(self, {"handle": i}, f"{name} object"))
        except RecursionError:
            raise ProtocolError("the kernel's reply is nested too deeply") from None

    def _answer(self, request: dict, reply_box: dict | None = None) -> Any:
        reply_text = self._send(json.dumps(request, allow_nan=False))
        if type(reply_text) is not str or len(reply_text) > MAX_REPLY_BYTES:
            raise ProtocolError(f"the kernel's reply is not text of at most {MAX_REPLY_BYTES} bytes")
        try:
            reply = json.loads(reply_text)
        except (ValueError, RecursionError) as e:
            raise ProtocolError(f"the kernel's reply is not JSON: {str(e)[:100]}") from None
        if type(reply) is not dict:
            raise ProtocolError("the kernel's reply is not a JSON object")
        if "error" in reply:
            raise _as_exception(reply["error"])
        if "ok" not in reply:
            raise ProtocolError("the kernel's reply holds neither an answer nor an error")
        if reply_box is not None:
            reply_box.update(reply)
        return reply["ok"]

    def resolve(self, name: str) -> Any:
        """The value of ``name`` in the learner's namespace: data, a module or a `Remote`.

        A module is the judge's own, and only one the judge has imported already: the
        kernel names it, it never decides what the judge imports.
        """
        reply: dict = {}
        answer = self._answer({"op": "resolve", "name": name}, reply)
        if type(reply.get("module")) is str:  # where the kernel says the object was defined
            self.origins[name] = reply["module"][:200]
        if type(answer) is dict and answer.get("$") == "module":
            module = sys.modules.get(str(answer.get("name")))
            if module is None:
                raise NameError(f"name {name!r} is the module {str(answer.get('name'))[:80]!r} in the notebook; "
                                "import it in the grade cell")
            return module
        if type(answer) is dict and answer.get("$") == "handle":
            return Remote(self, {"name": name}, f"{str(answer.get('type', 'object'))[:100]} {name!r}")
        try:
            return decode(answer, remote=lambda i, t: Remote(self, {"handle": i}, f"{t} object"))
        except RecursionError:
            raise ProtocolError("the kernel's reply is nested too deeply") from None

    def call(self, ref: dict, args: tuple, kwargs: dict) -> Any:
        return self.ask({"op": "call", "target": ref, "args": encode(list(args), handle=_remote_ref),
                         "kwargs": encode(kwargs, handle=_remote_ref)})

    def getattr(self, ref: dict, name: str) -> Any:
        return self.ask({"op": "getattr", "target": ref, "name": name})

    def probe(self, probe: Callable, ref: dict, kwargs: dict) -> Any:
        return self.ask({"op": "probe", "probe": f"{probe.__module__}:{probe.__qualname__}", "target": ref,
                         "kwargs": encode(kwargs)})


def _remote_ref(value) -> int:
    # A Remote passed back as an argument: the kernel looks its object up by number.
    if isinstance(value, Remote) and "handle" in value._ref:
        return value._ref["handle"]
    raise TypeError(f"a {type(value).__name__} cannot be sent to the learner's kernel: only numbers, strings, "
                    "lists, tuples, dicts, NumPy arrays, tensors and the kernel's own objects can")


def _as_exception(error: Any) -> Exception:
    from ftlib.checks._common import CheckFailure

    if type(error) is not dict:
        return ProtocolError("the kernel's error is not a JSON object")
    name, message = str(error.get("type", "Exception"))[:100], str(error.get("message", ""))
    if name == "CheckFailure":
        return CheckFailure(message)
    if name in _BUILTIN_ERRORS:
        return _BUILTIN_ERRORS[name](message)
    return RemoteError(f"{name}: {message}" if message else name)


class Remote:
    """An object in the learner's kernel, seen from the judge: call it, read its attributes.

    Arguments go to the kernel as data (`encode`); what comes back is data or another
    `Remote`. Exceptions raised by the learner's code come back as the built-in
    exception of the same name, `RemoteError` otherwise, or `CheckFailure` from a probe.
    """

    __slots__ = ("_channel", "_ref", "_label")

    def __init__(self, channel: Channel, ref: dict, label: str) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_label", label)

    def __call__(self, *args, **kwargs):
        return self._channel.call(self._ref, args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__") and name not in _REMOTE_DUNDERS:
            raise AttributeError(name)
        return self._channel.getattr(self._ref, name)

    def __setattr__(self, name, value):
        raise AttributeError("a Remote is read-only: the learner's objects are changed by their own code only")

    def __repr__(self) -> str:
        return f"<{self._label} in the learner's kernel>"


class LoopbackChannel(Channel):
    """A channel to `serve` in this very process, through the same JSON: for tests.

    ``namespace`` plays the learner's notebook; every value crosses as text exactly as
    it would between two processes.
    """

    def __init__(self, namespace: dict) -> None:
        self.namespace = namespace
        self.handles: dict[int, Any] = {}

    def _send(self, text: str) -> str:
        return serve(text, self.namespace, self.handles)

    def remote(self, name: str) -> Any:
        return self.resolve(name)


def observe(probe: Callable, target: Any, **kwargs) -> Any:
    """``probe(target, **kwargs)`` where ``target`` lives, as data.

    ``probe`` is a module-level function of a checks module: it builds its own inputs,
    calls the learner's ``target`` on them and returns what it saw as data (see
    `encode`), or raises `CheckFailure`. With a `Remote` target it runs in the learner's
    kernel; otherwise here. ``kwargs`` must be data.
    """
    if isinstance(target, Remote):
        return target._channel.probe(probe, target._ref, kwargs)
    return decode(json.loads(json.dumps(encode(probe(target, **kwargs)))))


# --------------------------------------------------------------------------- the kernel's side

_HANDLES: dict[int, Any] = {}


def serve(request_text: str, namespace: dict | None = None, handles: dict | None = None) -> str:
    """Answer one judge request (JSON text) about the learner's namespace; return JSON text.

    Runs in the learner's kernel (``namespace`` defaults to IPython's user namespace).
    The reply is ``{"ok": value}`` or ``{"error": {"type", "message"}}``.
    """
    handles = _HANDLES if handles is None else handles
    if namespace is None:
        namespace = _user_namespace()

    def keep(obj) -> int:
        number = len(handles) + 1
        handles[number] = obj
        return number

    def target(ref) -> Any:
        if type(ref) is dict and "name" in ref:
            if ref["name"] not in namespace:
                raise NameError(f"name {ref['name']!r} is not defined")
            return namespace[ref["name"]]
        return handles[ref["handle"]]

    def value(data):
        return decode(data, remote=lambda i, _name: handles[i])

    try:
        request = json.loads(request_text)
        op = request["op"]
        if op == "resolve":
            name = request["name"]
            if name not in namespace:
                raise NameError(f"name {name!r} is not defined")
            obj = namespace[name]
            if type(obj).__name__ == "module" and isinstance(getattr(obj, "__name__", None), str):
                return json.dumps({"ok": {"$": "module", "name": obj.__name__}})
            origin = getattr(obj, "__module__", None) if callable(obj) else None
            reply = {"ok": encode(obj, handle=keep)}
            if isinstance(origin, str):
                reply["module"] = origin
            return json.dumps(reply)
        elif op == "call":
            result = target(request["target"])(*value(request["args"]), **value(request["kwargs"]))
        elif op == "getattr":
            result = getattr(target(request["target"]), request["name"])
        elif op == "probe":
            module, _, qualname = request["probe"].partition(":")
            probe = importlib.import_module(module)
            for part in qualname.split("."):
                probe = getattr(probe, part)
            # A probe returns data by contract: anything else fails here as it does locally.
            return json.dumps({"ok": encode(probe(target(request["target"]), **value(request["kwargs"])))})
        else:
            raise ValueError(f"unknown request {op!r}")
        return json.dumps({"ok": encode(result, handle=keep)})
    except BaseException as e:  # everything the learner's code raised goes back as data
        return json.dumps({"error": {"type": type(e).__name__, "message": _message(e)}})


def _message(e: BaseException) -> str:
    try:
        text = str(e)
    except Exception:  # a learner's exception whose __str__ fails
        text = f"<{type(e).__name__}>"
    if type(e).__name__ == "CheckFailure":
        from ftlib.checks._common import where_in_learner_code

        text += "".join(f"\n  in your code: {w}" for w in where_in_learner_code(e))
    return text[:20_000]


def _user_namespace() -> dict:
    ip = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if ip is not None:
        return ip.user_ns
    return vars(sys.modules["__main__"])
