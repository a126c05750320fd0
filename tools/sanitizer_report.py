"""Sum up sanitizer log files (scripts/sanitize.sh).

    python tools/sanitizer_report.py LOG_DIR
    python tools/sanitizer_report.py --valgrind LOG_DIR
    python tools/sanitizer_report.py --tsan LOG_DIR

LOG_DIR holds ``asan.<pid>``, ``ubsan.<pid>`` and ``lsan.<pid>`` files
(ASAN_OPTIONS/UBSAN_OPTIONS ``log_path``).  Every AddressSanitizer error
and UBSan runtime error is printed with its stack, marked OURS when a
frame of the first few is poolparty's code.  A LeakSanitizer leak is
printed as OURS only when poolparty allocated it itself (see
``allocated_by_us``); CPython's own leaks are only counted.  Exit status
1 if anything was OURS, or if any ASan error (ours or not) occurred.

With ``--valgrind``, LOG_DIR holds memcheck logs (``memcheck.<pid>``):
every memcheck error is printed, marked OURS as above, and every
"definitely lost" record is judged like a LeakSanitizer leak.
"""

import os
import re
import sys

# Frames that belong to poolparty: the extension module's file, or the
# source tree (RelWithDebInfo builds carry file:line).
OURS = re.compile(r"_poolparty\.cpython|/src/(core|module)/|\bsrc/(core|module)/")
FRAME = re.compile(r"^\s*#(\d+) 0x[0-9a-f]+ in (\S+) (.*)$")
# Allocation entry points: skipped when looking for who allocated.
ALLOCATORS = re.compile(
    r"^(malloc|calloc|realloc|posix_memalign|aligned_alloc|__interceptor_\w+|"
    r"_?PyMem_\w+|_?PyObject_(Malloc|Calloc|Realloc|New\w*|GC_\w+|Init\w*)|"
    r"PyType_GenericAlloc|_PyType_AllocNoTrack|gc_alloc|"
    r"_?Py\w+_New\w*|_?Py\w+_From\w+|_?Py\w+_Resize\w*|"
    r"_?PyBytes_\w+|_?PyUnicode_\w+|_?PyList_\w+|_?PyTuple_\w+|_?PyDict_\w+|"
    r"_?PyLong_\w+|_PyObject_\w+|PyObject_\w+)$"
)
# Running Python code or importing: whatever leaks below that is CPython's
# or the Python code's, not an allocation poolparty made.
THROUGH_PYTHON = re.compile(
    r"_PyEval_EvalFrame\w*|_PyEval_Vector|PyEval_EvalCode|"
    r"PyImport_\w+|_PyImport_\w+|Py_NewInterpreter\w*|Py_EndInterpreter|"
    r"PyRun_\w+"
)


def frames(block):
    out = []
    for line in block.splitlines():
        m = FRAME.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


def is_ours(frame):
    _, func, where = frame
    return bool(OURS.search(where)) or func.startswith(("pp_", "pp__", "engine_", "interp_"))


def allocated_by_us(stack):
    """True if poolparty allocated this block: walking up from the
    allocation, skip allocator and object-constructor frames; the first
    other frame must be poolparty's, reached without running Python code."""
    for frame in stack:
        _, func, where = frame
        if is_ours(frame):
            return True
        if THROUGH_PYTHON.match(func):
            return False
        if ALLOCATORS.match(func) or "libasan" in where or "libc.so" in where:
            continue
        return False
    return False


def split_reports(text, start):
    parts = re.split(r"(?m)^(?===\d+==ERROR: )", text)
    return [p for p in parts if re.match(r"==\d+==ERROR: ", p)]


def main(log_dir):
    bad = 0
    asan_errors = crashes = 0
    leaks_total = leaks_ours = 0
    ub_total = ub_ours = 0
    for name in sorted(os.listdir(log_dir)):
        path = os.path.join(log_dir, name)
        with open(path, errors="replace") as f:
            text = f.read()
        if name.startswith(("asan", "lsan")) and "CHECK failed" in text:
            bad = 1
            print(f"--- the sanitizer runtime itself failed in {name}:\n{text[:3000]}\n")
        if name.startswith(("asan", "lsan")):
            for block in split_reports(text, "=="):
                head = block.splitlines()[0]
                if "LeakSanitizer" in head:
                    for leak in re.split(r"\n(?=(?:Direct|Indirect) leak of )", block)[1:]:
                        leaks_total += 1
                        if leak.startswith("Direct") and allocated_by_us(frames(leak)):
                            leaks_ours += 1
                            bad = 1
                            print(f"--- OURS: leak in {name}\n{leak.strip()}\n")
                    continue
                if "AddressSanitizer" in head:
                    ours = any(is_ours(f) for f in frames(block)[:12])
                    tag = "OURS" if ours else "not ours (no poolparty frame on top)"
                    if re.search(r"AddressSanitizer: (ABRT|SEGV) ", head) and \
                            "fatal_error" in block and not ours:
                        # CPython's own "Fatal Python error" abort (e.g. the
                        # fork-child crash the xfail tests document).
                        crashes += 1
                        print(f"--- CPython fatal error (abort) in {name}:\n"
                              f"{block.strip()[:1500]}\n")
                        continue
                    names = [f[1] for f in frames(block)[:4]]
                    expected = None
                    if not ours and name.startswith("asan-expected-current-frames"):
                        # test_sys_current_frames_while_tasks_run_does_not_crash
                        # logs here: wherever its corruption strikes
                        expected = "CPython's sys._current_frames() hazard"
                    elif not ours and ("_PyThread_CurrentFrames" in block or (
                            "frame_dealloc" in block and "dict_dealloc" in block)):
                        # run on purpose by
                        # test_sys_current_frames_while_tasks_run_does_not_crash
                        expected = "CPython's sys._current_frames() hazard"
                    elif not ours and "PyOS_AfterFork_Child" in block:
                        # run on purpose by the test_fork_* xfail tests
                        expected = "CPython's fork-child crash (gh-101437)"
                    if expected:
                        crashes += 1
                        print(f"--- {expected} in {name} (expected)\n")
                        continue
                    if "__sanitizer::UnsetAlternateSignalStack()" in names and \
                            any("AsanThread::Destroy" in n for n in names):
                        # ASan's own thread teardown tripping over stack
                        # poison left by a thread that was ended with
                        # pthread_exit (CPython does that to a thread that
                        # wants its GIL back after finalization started).
                        crashes += 1
                        print(f"--- ASan false positive in {name} (a thread "
                              f"ended by pthread_exit during finalization):\n"
                              f"{block.strip()[:1200]}\n")
                        continue
                    asan_errors += 1
                    bad = 1
                    print(f"--- {tag}: ASan error in {name}\n{block.strip()}\n")
        elif name.startswith("ubsan"):
            for block in re.split(r"(?m)^(?=\S+:\d+:\d+: runtime error:)", text):
                if "runtime error:" not in block:
                    continue
                ub_total += 1
                if OURS.search(block.splitlines()[0]) or any(is_ours(f) for f in frames(block)[:3]):
                    ub_ours += 1
                    bad = 1
                    print(f"--- OURS: UBSan in {name}\n{block.strip()}\n")
                else:
                    print(f"--- not ours: UBSan in {name}\n{block.strip()[:2000]}\n")
    print(f"sanitizer summary for {log_dir}: {asan_errors} ASan error(s), "
          f"{crashes} CPython fatal-error abort(s) or known false positives; "
          f"{ub_total} UBSan report(s), {ub_ours} in poolparty; "
          f"{leaks_total} leak record(s) after suppressions, "
          f"{leaks_ours} allocated by poolparty")
    return bad


VG_FRAME = re.compile(r"^==\d+==\s+(?:at|by) 0x[0-9A-Fa-f]+: (\S+) \((.*)\)$")


def vg_frames(block):
    out = []
    for n, line in enumerate(block.splitlines()):
        m = VG_FRAME.match(line)
        if m:
            out.append((len(out), m.group(1), m.group(2)))
    return out


def main_valgrind(log_dir):
    bad = 0
    errors = errors_ours = leaks = leaks_ours = 0
    summaries = []
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name), errors="replace") as f:
            text = f.read()
        # records are separated by "==PID== " blank lines
        for block in re.split(r"(?m)^==\d+== ?$", text):
            block = block.strip()
            if not block:
                continue
            first = re.sub(r"^==\d+==\s*", "", block.splitlines()[0])
            if "definitely lost in loss record" in first:
                leaks += 1
                if allocated_by_us(vg_frames(block)):
                    leaks_ours += 1
                    bad = 1
                    print(f"--- OURS: definite leak in {name}\n{block}\n")
            elif re.match(r"(Invalid|Conditional jump|Use of uninitialised|"
                          r"Syscall param|Mismatched free|Source and destination|"
                          r"Argument)", first):
                errors += 1
                ours = any(is_ours(f) for f in vg_frames(block)[:12])
                errors_ours += ours
                bad |= ours
                tag = "OURS" if ours else "not ours"
                print(f"--- {tag}: memcheck error in {name}\n{block[:4000]}\n")
            elif first.startswith(("LEAK SUMMARY", "ERROR SUMMARY")) or "definitely lost:" in block:
                summaries.append(block)
    for block in summaries:
        print(block)
    print(f"valgrind summary for {log_dir}: {errors} memcheck error(s), "
          f"{errors_ours} in poolparty; {leaks} definite leak record(s) after "
          f"suppressions, {leaks_ours} allocated by poolparty")
    return bad


def main_tsan(log_dir):
    """ThreadSanitizer logs (tsan.<pid>): a report is poolparty's when a
    poolparty frame is among the top frames of either access."""
    bad = total = ours = 0
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name), errors="replace") as f:
            text = f.read()
        for block in re.split(r"(?m)^(?==+\nWARNING: ThreadSanitizer)|^(?=WARNING: ThreadSanitizer)", text):
            if "WARNING: ThreadSanitizer" not in block:
                continue
            total += 1
            # only the stacks of the accesses, not where a thread was made
            stacks = [st for st in re.split(r"\n\s*\n", block)
                      if re.search(r"(Read|Write|Atomic \w+) of size", st.split("\n#", 1)[0])
                      or re.search(r"^\s*(Previous )?(read|write|atomic \w+) of size", st, re.I | re.M)]
            mine = any(is_ours(f) for stack in stacks for f in frames(stack)[:6])
            if mine:
                ours += 1
                bad = 1
            tag = "OURS" if mine else "not ours"
            print(f"--- {tag}: {name}\n{block.strip()[:4000]}\n")
    print(f"tsan summary for {log_dir}: {total} report(s) after suppressions, "
          f"{ours} with a poolparty frame in an access")
    return bad


if __name__ == "__main__":
    if sys.argv[1] == "--tsan":
        sys.exit(main_tsan(sys.argv[2]))
    if sys.argv[1] == "--valgrind":
        sys.exit(main_valgrind(sys.argv[2]))
    sys.exit(main(sys.argv[1]))
