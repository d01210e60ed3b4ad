"""Where the peak memory of one training step goes: DiG vs DiT at the same size, resolution and batch.

    python benchmarks/memory_attribution.py --size S/2 --res 2048 --batch 4 --modes eager compile \
        --top 25 --out DIR [--dump]

Each family runs ``gladiff bench``'s training step (``gladiff.bench.model._Case``: same random
inputs, bf16 autocast, fused AdamW) eagerly and/or under ``torch.compile`` (whole model). CUDA graphs
are left out: the allocator's history inside a captured graph cannot be attributed. After warm-up
(compilation done, optimizer state allocated, gradients set to ``None`` as the bench does), one step
runs with the allocator's history on (``torch.cuda.memory._record_memory_history``), and
``attribute_peak`` reads the snapshot (``torch.cuda.memory._snapshot()``):

* the peak: the largest total of live allocations (requested bytes) over the step's alloc /
  free_completed events, and the phase it falls in (forward, loss, backward, optimizer; phases are
  told by tiny marker allocations, see ``_phase_marker``);
* the blocks live at the peak, grouped by the most specific frame of their allocation stack that says
  where they come from: a gladiff line outside the bench harness (``gladiff/ops/...:line:function``),
  a generated inductor wrapper line with the kernel that writes the buffer, or, for eager backward
  ops without a Python frame, the autograd node (``autograd MmBackward0``; needs ``--stacks all``);
* a breakdown by category: parameters, buffers, gradients, optimizer state, inputs (known tensors,
  matched by address), memory allocated before the step, and the rest (activations + transients);
* the difference DiG - DiT per category and per group (groups matched across the families by a key
  without line numbers or kernel indices).

Writes ``DIR/memory_attribution_<card>_<size>_<res>_b<batch>.json`` (card, versions, command, and for
each family and mode the peak, its phase and the top groups; about 50 KB) and prints the tables.
``--dump`` also writes each raw snapshot (``memory_snapshot_<family>_<mode>.pickle``, tens of MB;
viewable at pytorch.org/memory_viz).
"""
from __future__ import annotations

import argparse
import gc
import linecache
import os
import pickle
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import environment, no_gpu_message, write_json  # noqa: E402
from gladiff.bench.model import _Case  # noqa: E402
from gladiff.models import compile_model  # noqa: E402
from gladiff.ops.dwconv import BACKENDS as DWCONV_BACKENDS  # noqa: E402

FAMILIES = ("DiG", "DiT")
MODES = ("eager", "compile")
MB = 2**20

# Phase boundaries are allocations made by _phase_marker, of a size that names the phase (multiples
# of 512 B, the allocator's granule, so the recorded size is exact). Each phase lasts until the next
# marker: "start" (gradients set to None), "forward" (the model), "loss" (MSE and its backward up to
# the model output's gradient), "backward" (the model's backward), "optimizer" (AdamW), "end".
PHASES = ("start", "forward", "loss", "backward", "optimizer", "end")
MARKER_FUNCTION = "_phase_marker"
MARKER_BYTES = {p: 512 * (i + 1) for i, p in enumerate(PHASES)}
BEFORE = "before step"  # phase of blocks allocated before the recorded step
PRE_STEP = "other, allocated before the step"  # category: e.g. cuBLAS workspaces
ACTIVATIONS = "activations + transients"  # category: allocated during the step, not a known tensor
CATEGORIES = ("parameters", "buffers", "gradients", "optimizer state", "inputs", PRE_STEP, ACTIVATIONS)

# Frames that only say "an allocation happened": never the answer to "who allocated this".
_CPP_PLUMBING = ("c10::", "std::", "unwind::", "torch::unwind", "torch::CapturedTraceback",
                 "gather_with_cpp", "at::detail::empty", "at::native::empty", "at::_ops::empty",
                 "at::empty", "at::cuda::detail::empty", "??")
_AUTOGRAD_NODE = re.compile(r"torch::autograd::(?:generated::)?(\w*Backward\w*|AccumulateGrad)::apply")
# The same, mangled (if the symbolizer leaves names as the symbol table has them):
# _ZN5torch8autograd9generated11MmBackward05applyE...
_AUTOGRAD_MANGLED = re.compile(r"_ZN5torch8autograd(?:9generated)?(\d+)(\w+)")
_GENERATED = re.compile(r"(torchinductor|/[0-9a-z]{2}/c[0-9a-z]{30,}\.py$)")
_BUF = re.compile(r"\s*(buf\d+)\s*=\s*(.*)")
_CALL = re.compile(r"\s*(?:\w+\s*=\s*)?([A-Za-z_][\w.]*)\(")
_NOT_KERNELS = ("empty_strided", "empty_strided_cuda", "reinterpret_tensor", "as_strided", "get_raw_stream")


# --------------------------------------------------------------------------------------------------
# Reading a snapshot (pure functions, tested on the CPU)
# --------------------------------------------------------------------------------------------------

def short_path(filename: str) -> str:
    """``.../gladiff/ops/dwconv.py`` -> ``gladiff/ops/dwconv.py``; ``.../site-packages/torch/x.py`` ->
    ``torch/x.py``; other paths keep their last component."""
    for root in ("/gladiff/", "/benchmarks/"):
        if root in filename:
            return root[1:] + filename.rsplit(root, 1)[1]
    if "site-packages/" in filename:
        return filename.rsplit("site-packages/", 1)[1]
    if "/torch/" in filename:
        return "torch/" + filename.rsplit("/torch/", 1)[1]
    return os.path.basename(filename)


def _is_python(filename: str) -> bool:
    return filename.endswith(".py") or filename.startswith("<")


def _kernel_key(site: str) -> str:
    """``triton_poi_fused_add_mul_3 [add, mul]`` -> ``triton_poi_fused_add_mul``: the same fused kernel
    gets another index in another graph."""
    if site.startswith("buffer "):
        return site
    return re.sub(r"_\d+$", "", site.split(" ", 1)[0])


def _autograd_node(name: str) -> str | None:
    """``MmBackward0`` from the C++ frame ``torch::autograd::generated::MmBackward0::apply(...)``, or
    from its mangled form; ``None`` for any other frame."""
    node = _AUTOGRAD_NODE.search(name)
    if node:
        return node.group(1)
    mangled = _AUTOGRAD_MANGLED.match(name)
    if mangled:
        n, rest = int(mangled.group(1)), mangled.group(2)
        node = rest[:n]
        if rest[n:].startswith("5apply") and (node == "AccumulateGrad" or "Backward" in node):
            return node
    return None


def frame_site(frames: list[dict], resolve=None) -> tuple[str, str]:
    """Who allocated a block: ``(label, key)`` from its allocation stack (``frames``, innermost first,
    each ``{"filename", "line", "name"}``). The first, innermost, of: a gladiff frame outside
    ``gladiff/bench`` (the harness calls everything); a generated inductor wrapper line, named by
    ``resolve(filename, line)`` (e.g. the kernel writing the buffer) when given; an autograd node in
    a C++ frame (eager backward). Else the innermost Python frame, else the innermost C++ frame that
    is not allocator plumbing. ``key`` is ``label`` without line numbers or kernel indices, to match
    the same site across models."""
    first_python = first_cpp = None
    for f in frames:
        filename, line, name = f.get("filename", ""), f.get("line", 0), f.get("name", "")
        if _is_python(filename):
            if _GENERATED.search(filename):
                site = resolve(filename, line) if resolve else None
                base = os.path.basename(filename)
                if site:
                    return f"inductor {base[:10]}:{line} {site}", f"inductor {_kernel_key(site)}"
                return f"inductor {base}:{line}", f"inductor {base}"
            path = short_path(filename)
            if path.startswith("gladiff/") and not path.startswith("gladiff/bench/"):
                return f"{path}:{line}:{name}", f"{path}:{name}"
            if first_python is None:
                first_python = (f"{path}:{line}:{name}", f"{path}:{name}")
        else:
            node = _autograd_node(name)
            if node:
                return f"autograd {node}", f"autograd {node}"
            if first_cpp is None and name and not name.startswith(_CPP_PLUMBING):
                first_cpp = "C++ " + name.split("(", 1)[0]
    if first_python:
        return first_python
    if first_cpp:
        return first_cpp, first_cpp
    return ("(no frames)", "(no frames)") if not frames else ("(allocator frames only)",) * 2


def inductor_site(lines: list[str], line: int) -> str | None:
    """What a line (1-based) of inductor's generated wrapper allocates, from its source ``lines``:
    for ``bufN = empty_strided_cuda(...)``, the first kernel that writes ``bufN`` after it and the
    source nodes inductor lists above that kernel (``"triton_poi_fused_mul_3 [x, mul]"``); for
    ``bufN = some_op(...)``, the op; ``None`` when the line is out of range."""
    if not 1 <= line <= len(lines):
        return None
    text = lines[line - 1]
    m = _BUF.match(text)
    if not m:
        call = _CALL.match(text)
        return call.group(1) if call else (text.strip()[:80] or None)
    buf, rhs = m.groups()
    call = _CALL.match(rhs)
    if call and not call.group(1).startswith("empty_strided"):
        return call.group(1)
    uses = re.compile(rf"\b{buf}\b")
    for j in range(line, min(len(lines), line + 400)):
        s = lines[j].strip()
        if s.startswith(("#", "del ")) or not uses.search(s):
            continue
        call = _CALL.match(s)
        if not call or call.group(1).split(".")[-1] in _NOT_KERNELS:
            continue  # an alias or a reuse, not the kernel that fills the buffer
        nodes = _source_nodes(lines, j)
        kernel = call.group(1).removesuffix(".run")
        return f"{kernel} [{nodes}]" if nodes else kernel
    # No kernel writes it under its own name (it is used through an alias): say what inductor
    # was computing where it was allocated.
    nodes = _source_nodes(lines, line - 1)
    return f"buffer [{nodes}]" if nodes else None


def _source_nodes(lines: list[str], index: int) -> str | None:
    """The FX nodes of inductor's nearest "Topologically Sorted Source Nodes" comment at or above
    ``lines[index]`` (within 30 lines), shortened to 60 characters."""
    for k in range(index, max(-1, index - 30), -1):
        note = re.match(r"\s*# Topologically Sorted Source Nodes: \[(.*?)\]", lines[k])
        if note:
            nodes = note.group(1)
            return nodes[:60] + "..." if len(nodes) > 60 else nodes
    return None


def read_inductor_site(filename: str, line: int) -> str | None:
    """``inductor_site`` on the generated file as it is on disk (run time only)."""
    lines = linecache.getlines(filename)
    return inductor_site(lines, line) if lines else None


class _Block:
    __slots__ = ("addr", "size", "frames", "index", "phase")

    def __init__(self, addr, size, frames, index, phase):
        self.addr, self.size, self.frames, self.index, self.phase = addr, size, frames, index, phase


_PHASE_OF_BYTES = {v: k for k, v in MARKER_BYTES.items()}


def _marker_phase(entry) -> str | None:
    """The phase a trace entry marks, ``None`` if it is not a marker (size first: frames are long)."""
    phase = _PHASE_OF_BYTES.get(entry.get("size"))
    if phase is None or entry.get("action") != "alloc":
        return None
    return phase if any(f.get("name") == MARKER_FUNCTION for f in entry.get("frames", ())) else None


def attribute_peak(snapshot: dict, *, device: int = 0, categories: dict[int, str] | None = None,
                   resolve=None) -> dict:
    """The peak of live memory over one recorded step, and what is live there.

    Takes a ``torch.cuda.memory._snapshot()`` dict: ``segments`` (each with ``device`` and ``blocks``:
    ``address``, ``size``, ``requested_size``, ``state``, ``frames``; the state at snapshot time) and
    ``device_traces[device]`` (``alloc`` / ``free_completed`` entries with ``addr``, ``size``
    (requested bytes), ``frames``; other actions are ignored). The step is the part of the trace
    after the last ``start`` marker (the whole trace without markers); the state at its beginning is
    the snapshot's live blocks with the step's events undone. ``categories`` maps the address of a
    block live at the end of the step to its category ("parameters", "gradients", ...); a block
    live at the peak gets it only if it is that same allocation (addresses are reused). ``resolve``
    is passed to ``frame_site``. Marker allocations are left out of every total.

    Returns a dict of bytes: ``peak_bytes``; ``peak_event`` (index of the event reaching the peak in
    the step, -1 for its start) of ``events``; ``peak_phase``; ``peak_site`` (the allocation reaching
    the peak); ``start_bytes``, ``end_bytes``; ``phase_peaks`` (phase -> the largest total in it);
    ``categories`` (category -> bytes live at the peak, all of ``CATEGORIES``); ``alloc_phases``
    (bytes of the step's own uncategorized blocks live at the peak, by the phase that allocated
    them); ``groups``: one ``{"site", "key", "bytes", "blocks", "phases"}`` per site live at the peak,
    largest first; ``unmatched_frees`` (frees of unknown blocks, 0 in a consistent snapshot);
    ``trace_events`` (the device trace's length) and ``start_markers`` (how many were found)."""
    categories = categories or {}
    traces = snapshot.get("device_traces", [])
    trace = traces[device] if device < len(traces) else []
    starts = [i for i, e in enumerate(trace) if _marker_phase(e) == "start"]
    window = trace[starts[-1]:] if starts else trace
    # The marker allocations and their frees (the next free of the same address) are skipped.
    skip, open_markers = {}, {}
    for i, e in enumerate(window):
        phase = _marker_phase(e)
        if phase:
            skip[i] = phase
            open_markers[e["addr"]] = i
        elif e.get("action") == "free_completed" and e.get("addr") in open_markers:
            skip[i] = None
            del open_markers[e["addr"]]

    # The state at the end, then each event of the step undone, gives the state at its start.
    live = {}
    for seg in snapshot.get("segments", []):
        if seg.get("device", device) != device:
            continue
        for b in seg.get("blocks", []):
            if b.get("state") == "active_allocated":
                live[b["address"]] = (b.get("requested_size", b["size"]), b.get("frames", []))
    for i in range(len(window) - 1, -1, -1):
        e = window[i]
        if i in skip:
            continue
        if e.get("action") == "alloc":
            live.pop(e["addr"], None)
        elif e.get("action") == "free_completed":
            # With context="alloc" a free's frames are its allocation's.
            live[e["addr"]] = (e["size"], e.get("frames", []))

    def replay(stop: int | None):
        """Blocks live after event ``stop`` (all events when None), and the running statistics."""
        blocks = {a: _Block(a, s, f, -1, BEFORE) for a, (s, f) in live.items()}
        total = sum(b.size for b in blocks.values())
        stats = dict(start=total, peak=total, peak_event=-1, peak_phase=None, unmatched=0,
                     phase_peaks={}, phase=None)
        for i, e in enumerate(window):
            if stop is not None and i > stop:
                break
            if i in skip:
                if skip[i]:
                    stats["phase"] = skip[i]
                    stats["phase_peaks"][skip[i]] = max(stats["phase_peaks"].get(skip[i], total), total)
                continue
            action = e.get("action")
            if action == "alloc":
                blocks[e["addr"]] = _Block(e["addr"], e["size"], e.get("frames", []), i, stats["phase"])
                total += e["size"]
            elif action == "free_completed":
                gone = blocks.pop(e["addr"], None)
                if gone is None:
                    stats["unmatched"] += 1
                    continue
                total -= gone.size
            else:
                continue
            if stats["phase"] is not None:
                p = stats["phase"]
                stats["phase_peaks"][p] = max(stats["phase_peaks"].get(p, total), total)
            if total > stats["peak"]:
                stats.update(peak=total, peak_event=i, peak_phase=stats["phase"])
        stats["total"] = total
        return blocks, stats

    end_blocks, stats = replay(None)
    peak_blocks, _ = replay(stats["peak_event"])

    by_category = dict.fromkeys(CATEGORIES, 0)
    alloc_phases = defaultdict(int)
    groups = {}
    for b in peak_blocks.values():
        # The same allocation (not only the same address) must still be live at the end.
        end = end_blocks.get(b.addr)
        cat = categories.get(b.addr) if end is not None and end.index == b.index else None
        if cat is not None:
            site = key = f"[{cat}]"
        else:
            cat = PRE_STEP if b.index < 0 else ACTIVATIONS
            site, key = frame_site(b.frames, resolve)
            if b.index >= 0:
                alloc_phases[b.phase or "(no marker)"] += b.size
        by_category[cat] = by_category.get(cat, 0) + b.size
        g = groups.setdefault(site, dict(site=site, key=key, bytes=0, blocks=0, phases=defaultdict(int)))
        g["bytes"] += b.size
        g["blocks"] += 1
        g["phases"][b.phase or "(no marker)"] += b.size
    for g in groups.values():
        g["phases"] = dict(g["phases"])
    peak_site = None
    if stats["peak_event"] >= 0:
        peak_site = frame_site(window[stats["peak_event"]].get("frames", []), resolve)[0]
    return dict(peak_bytes=stats["peak"], peak_event=stats["peak_event"], events=len(window),
                peak_phase=stats["peak_phase"], peak_site=peak_site, start_bytes=stats["start"],
                end_bytes=stats["total"], phase_peaks=stats["phase_peaks"], categories=by_category,
                alloc_phases=dict(alloc_phases),
                groups=sorted(groups.values(), key=lambda g: (-g["bytes"], g["site"])),
                unmatched_frees=stats["unmatched"], trace_events=len(trace), start_markers=len(starts))


def summarize(analysis: dict, top: int) -> dict:
    """``attribute_peak``'s result in MB (2^20 bytes) with the ``top`` largest groups, the rest
    summed into ``other_groups_mb``: what goes into the JSON."""
    mb = lambda n: round(n / MB, 3)  # noqa: E731
    groups = analysis["groups"]
    return dict(
        peak_mb=mb(analysis["peak_bytes"]), peak_phase=analysis["peak_phase"],
        peak_position=round((analysis["peak_event"] + 1) / max(1, analysis["events"]), 4),
        peak_site=analysis["peak_site"], events=analysis["events"],
        start_mb=mb(analysis["start_bytes"]), end_mb=mb(analysis["end_bytes"]),
        phase_peaks_mb={k: mb(v) for k, v in analysis["phase_peaks"].items()},
        categories_mb={k: mb(v) for k, v in analysis["categories"].items()},
        alloc_phases_mb={k: mb(v) for k, v in analysis["alloc_phases"].items()},
        groups=[dict(site=g["site"], key=g["key"], mb=mb(g["bytes"]), blocks=g["blocks"],
                     phases_mb={k: mb(v) for k, v in g["phases"].items()}) for g in groups[:top]],
        other_groups_mb=mb(sum(g["bytes"] for g in groups[top:])), groups_total=len(groups),
        unmatched_frees=analysis["unmatched_frees"])


def compare(a: dict, b: dict, top: int, names=("DiG", "DiT")) -> dict:
    """The difference ``a - b`` of two ``attribute_peak`` results, in MB: the peak, every category,
    and the ``top`` group keys whose live bytes at the peak differ most (by absolute difference;
    keys equal on both sides left out)."""
    mb = lambda n: round(n / MB, 3)  # noqa: E731
    na, nb = names

    def keyed(res):
        out = defaultdict(int)
        for g in res["groups"]:
            out[g["key"]] += g["bytes"]
        return out

    ka, kb = keyed(a), keyed(b)
    rows = [(k, ka.get(k, 0), kb.get(k, 0)) for k in set(ka) | set(kb) if ka.get(k, 0) != kb.get(k, 0)]
    rows.sort(key=lambda r: (-abs(r[1] - r[2]), r[0]))
    cats = list(dict.fromkeys([*a["categories"], *b["categories"]]))
    return dict(
        peak={f"{na}_mb": mb(a["peak_bytes"]), f"{nb}_mb": mb(b["peak_bytes"]),
              "delta_mb": mb(a["peak_bytes"] - b["peak_bytes"])},
        categories=[{"category": c, f"{na}_mb": mb(a["categories"].get(c, 0)),
                     f"{nb}_mb": mb(b["categories"].get(c, 0)),
                     "delta_mb": mb(a["categories"].get(c, 0) - b["categories"].get(c, 0))} for c in cats],
        groups=[{"key": k, f"{na}_mb": mb(x), f"{nb}_mb": mb(y), "delta_mb": mb(x - y)} for k, x, y in rows[:top]],
        groups_differing=len(rows))


def format_report(runs: list[dict], differences: dict, top: int) -> str:
    """The printed tables: per mode, the two families' peaks and categories side by side, the groups
    that differ most, then each family's largest groups. ``runs`` hold ``summarize`` results plus
    ``family`` and ``mode``; ``differences`` maps a mode to ``compare``'s result."""
    lines = []
    for mode, diff in differences.items():
        pair = {r["family"]: r for r in runs if r["mode"] == mode and "peak_mb" in r}
        dig, dit = pair.get("DiG"), pair.get("DiT")
        lines.append(f"== {mode}: peak DiG {diff['peak']['DiG_mb']:.1f} MB "
                     f"({dig['peak_phase']}, {100 * dig['peak_position']:.0f}% of the step) | "
                     f"DiT {diff['peak']['DiT_mb']:.1f} MB ({dit['peak_phase']}, "
                     f"{100 * dit['peak_position']:.0f}%) | DiG - DiT {diff['peak']['delta_mb']:+.1f} MB")
        lines.append(f"  {'live at the peak, by category':42} {'DiG MB':>10} {'DiT MB':>10} {'delta':>9}")
        for c in diff["categories"]:
            lines.append(f"  {c['category']:42} {c['DiG_mb']:10.1f} {c['DiT_mb']:10.1f} {c['delta_mb']:+9.1f}")
        lines.append(f"  {'groups that differ (' + str(diff['groups_differing']) + ')':70} "
                     f"{'DiG MB':>9} {'DiT MB':>9} {'delta':>9}")
        for g in diff["groups"]:
            lines.append(f"  {g['key'][:70]:70} {g['DiG_mb']:9.1f} {g['DiT_mb']:9.1f} {g['delta_mb']:+9.1f}")
        for name, r in (("DiG", dig), ("DiT", dit)):
            made = ", ".join(f"{k} {v:.1f}" for k, v in r["alloc_phases_mb"].items())
            lines.append(f"  {name} {mode}: largest groups live at the peak (the step's own blocks there, "
                         f"MB by the phase that allocated them: {made or '-'})")
            for g in r["groups"][:top]:
                phases = ",".join(sorted(g["phases_mb"]))
                lines.append(f"    {g['mb']:9.1f} MB x{g['blocks']:<4d} {g['site'][:100]}  ({phases})")
    for r in runs:
        if "error" in r:
            lines.append(f"{r['family']} {r['mode']}: ERROR {r['error']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Recording one step (GPU)
# --------------------------------------------------------------------------------------------------

def _phase_marker(phase: str) -> None:
    """A tiny allocation, freed at once, whose size names ``phase``; attribute_peak finds it in the
    trace by this function's frame."""
    torch.empty(MARKER_BYTES[phase], dtype=torch.uint8, device="cuda")


class _Marked:
    """The model as ``_Case.train_step`` calls it, with phase markers: ``forward`` before it,
    ``loss`` after it, ``backward`` when the gradient of its output arrives."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args):
        _phase_marker("forward")
        out = self.model(*args)
        _phase_marker("loss")
        if out.requires_grad:
            out.register_hook(lambda grad: _phase_marker("backward"))
        return out


def known_tensors(case: _Case) -> dict[int, str]:
    """Storage address -> category of the tensors whose memory is known from the model: parameters,
    buffers, gradients, optimizer state, inputs (after a step, so gradients and state exist)."""
    cats = {}

    def add(t, cat):
        if torch.is_tensor(t) and t.is_cuda:
            cats.setdefault(t.untyped_storage().data_ptr(), cat)

    for p in case.model.parameters():
        add(p, "parameters")
        add(p.grad, "gradients")
    for b in case.model.buffers():
        add(b, "buffers")
    for state in case.opt.state.values():
        for v in state.values():
            add(v, "optimizer state")
    for t in (case.x, case.noise, case.t, case.y):
        add(t, "inputs")
    return cats


def _history_kwargs(**wanted) -> dict:
    """The keyword arguments of ``_record_memory_history`` this torch knows (``clear_history`` is newer)."""
    import inspect

    try:
        params = inspect.signature(torch.cuda.memory._record_memory_history).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in wanted.items() if k in params}


def record_step(family: str, args, mode: str) -> tuple[dict, dict, dict]:
    """One warmed-up training step of ``family`` under ``mode`` with the allocator's history on.
    Returns ``(snapshot, categories, info)``; ``info`` has the parameter count, the known tensors'
    bytes and ``torch.cuda.max_memory_allocated`` over the step (block sizes, rounded up to 512 B)."""
    stacks = dict(stacks=args.stacks)
    # Blocks allocated from here on keep their stack (parameters, optimizer state, workspaces).
    torch.cuda.memory._record_memory_history("state", context="state", **stacks)
    case = _Case(family, args.size, args.res, args.batch, args.dit_attn if family == "DiT" else None,
                 "auto", args.dwconv_backend)
    case.model.train()
    case.opt = torch.optim.AdamW(case.model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    case.opt.register_step_pre_hook(lambda *_: _phase_marker("optimizer"))
    model = _Marked(compile_model(case.model, "model") if mode == "compile" else case.model)
    for _ in range(args.warmup):
        case.opt.zero_grad(set_to_none=True)
        case.train_step(model)
    case.opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history("all", context="alloc", max_entries=args.max_entries, **stacks,
                                             **_history_kwargs(clear_history=True))
    _phase_marker("start")
    case.train_step(model)
    _phase_marker("end")
    torch.cuda.synchronize()
    info = dict(torch_peak_mb=round(torch.cuda.max_memory_allocated() / MB, 3),
                params=sum(p.numel() for p in case.model.parameters()))
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(None)
    categories = known_tensors(case)
    params = list(case.model.parameters())
    nbytes = lambda ts: round(sum(t.untyped_storage().nbytes() for t in ts) / MB, 3)  # noqa: E731
    info["known_mb"] = {"parameters": nbytes(params),
                        "gradients": nbytes(p.grad for p in params if p.grad is not None),
                        "optimizer state": nbytes(v for s in case.opt.state.values() for v in s.values()
                                                  if torch.is_tensor(v))}
    del case, model
    return snapshot, categories, info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="S/2")
    p.add_argument("--res", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--top", type=int, default=25, help="groups listed per family and in the difference")
    p.add_argument("--dit-attn", default="flash", choices=("flash", "cudnn"), help="DiT's SDPA backend")
    p.add_argument("--dwconv-backend", default="auto", choices=DWCONV_BACKENDS)
    p.add_argument("--warmup", type=int, default=2, help="steps before the recorded one (compilation, "
                   "optimizer state)")
    p.add_argument("--stacks", default="all", choices=("python", "all"),
                   help="'all' adds C++ frames: names the autograd node of eager backward allocations")
    p.add_argument("--max-entries", type=int, default=500_000, help="allocator events kept")
    p.add_argument("--dump", action="store_true", help="also write each raw snapshot pickle (large)")
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"),
                   help="folder for the JSON (default $OUT, else benchmarks/results)")
    args = p.parse_args(argv)
    if args.top < 1 or args.warmup < 1 or args.max_entries < 1000:
        raise ValueError(f"--top and --warmup must be >= 1 and --max-entries >= 1000, got {args.top}, "
                         f"{args.warmup}, {args.max_entries}")
    if args.res % 16:
        raise ValueError(f"--res {args.res} must be a multiple of 16 (latent res/8 with patch 2)")
    if not torch.cuda.is_available():
        print(no_gpu_message("memory_attribution"))
        return 0
    # C++ frames named from the dynamic symbol table: addr2line over libtorch takes minutes.
    os.environ.setdefault("TORCH_SYMBOLIZE_MODE", "dladdr")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    card = torch.cuda.get_device_name().replace(" ", "_")
    out = Path(args.out)
    path = out / f"memory_attribution_{card}_{args.size.replace('/', '')}_{args.res}_b{args.batch}.json"
    report = dict(environment=environment(), size=args.size, res=args.res, batch=args.batch,
                  dit_attn=args.dit_attn, dwconv_backend=args.dwconv_backend, stacks=args.stacks,
                  warmup=args.warmup, units="MB = 2^20 bytes; trace totals count requested bytes",
                  runs=[], differences={})
    full = {}
    device = torch.cuda.current_device()
    from tqdm import tqdm

    for mode in args.modes:
        for family in tqdm(args.families, desc=f"memory attribution ({mode})"):
            row = dict(family=family, mode=mode)
            t0 = time.time()
            try:
                snapshot, categories, info = record_step(family, args, mode)
                analysis = attribute_peak(snapshot, device=device, categories=categories,
                                          resolve=read_inductor_site)
                full[(family, mode)] = analysis
                row.update(info, **summarize(analysis, args.top))
                if analysis["trace_events"] >= args.max_entries or analysis["start_markers"] == 0:
                    # The ring buffer wrapped: the step's beginning is lost, the window is partial.
                    row["warning"] = (f"trace of {analysis['trace_events']} events (--max-entries "
                                      f"{args.max_entries}) without its start marker: raise --max-entries")
                if args.dump:
                    out.mkdir(parents=True, exist_ok=True)
                    with open(out / f"memory_snapshot_{family}_{mode}.pickle", "wb") as f:
                        pickle.dump(snapshot, f)
                del snapshot
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
            except Exception as err:  # one failing run must not lose the others
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            finally:
                torch.cuda.memory._record_memory_history(None)
                torch._dynamo.reset()
                gc.collect()
                torch.cuda.empty_cache()
            row["seconds"] = round(time.time() - t0, 1)
            report["runs"].append(row)
            if "warning" in row:
                print(f"{family} {mode}: WARNING {row['warning']}", flush=True)
            if "error" in row:
                print(f"{family} {mode}: ERROR {row['error']}", flush=True)
            else:
                print(f"{family} {mode}: peak {row['peak_mb']:.1f} MB in {row['peak_phase']} "
                      f"(torch.cuda.max_memory_allocated {row['torch_peak_mb']:.1f} MB), "
                      f"{row['events']} events, {row['seconds']} s", flush=True)
            write_json(path, report)  # saved after each run, so a run cut short keeps what it did
        if ("DiG", mode) in full and ("DiT", mode) in full:
            report["differences"][mode] = compare(full["DiG", mode], full["DiT", mode], args.top)
            write_json(path, report)
    print(format_report(report["runs"], report["differences"], args.top))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
