"""RELIABILITY.md, generated: every fault and bad input the suite tries, and the scale figures.

The rows below name the tests that prove them; tests/test_reliability.py fails when a named test
does not exist, when a test of the fault suites has no row, or when RELIABILITY.md differs from
what this renders (regenerate with `make reliability`). Trial counts come from the tests' own
constants; the scale and long-loop figures from benchmarks/results/*.json, written by `make bench`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "RELIABILITY.md"
GOAL = "nothing beyond the faulty cell"
# Test files whose every test must have a row here.
SUITES = (
    "tests/test_faults.py",
    "tests/test_kill_resume.py",
    "tests/test_model_faults.py",
    "tests/test_memory_limit.py",
    "tests/test_volume_faults.py",
    "tests/test_foreign_files.py",
    "tests/test_hostile_input.py",
    "tests/test_secrets.py",
    "tests/test_sync.py",
)


def const(module: str, name: str) -> Callable[[], int]:
    """A test module's constant, read when the document is rendered (so the count cannot drift)."""

    def get() -> int:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        return getattr(importlib.import_module(module), name)

    return get


@dataclass(frozen=True)
class Row:
    fault: str
    tests: tuple[str, ...]  # "tests/test_x.py::test_name"
    trials: str | Callable[[], str]
    happened: str
    lost: str

    def trials_text(self) -> str:
        return self.trials() if callable(self.trials) else self.trials


def _times(count: Callable[[], int], unit: str, factor: int = 1) -> Callable[[], str]:
    return lambda: f"{count() * factor} {unit}"


FAULTS: list[Row] = [
    Row(
        "worker killed by SIGKILL",
        ("tests/test_faults.py::test_crash_by_signal",),
        "1 per run, in an 8-cell run",
        "status failed, error kind crash, signal SIGKILL named in the reason; the cells after it run; exit 1",
        GOAL,
    ),
    Row(
        "worker killed by SIGSEGV",
        ("tests/test_faults.py::test_crash_by_signal",),
        "1 per run, in an 8-cell run",
        "status failed, error kind crash, signal SIGSEGV named in the reason; exit 1",
        GOAL,
    ),
    Row(
        "worker exits non-zero without a result",
        ("tests/test_faults.py::test_exit_without_result",),
        "1 per run, in an 8-cell run",
        'status failed, kind crash, "exited with code 7 without a result"; exit 1',
        GOAL,
    ),
    Row(
        "worker raises a Python error",
        ("tests/test_faults.py::test_python_error",),
        "1 per run, in an 8-cell run",
        "status failed, kind python, exception type, message and traceback kept; exit 1",
        GOAL,
    ),
    Row(
        "worker hangs",
        ("tests/test_faults.py::test_timeout_kills_the_whole_process_group",),
        "1 per run, in an 8-cell run",
        "status timeout after cell_timeout_s; the worker's whole process group (and its helper child) killed, none left",
        GOAL,
    ),
    Row(
        "allocation the host refuses",
        ("tests/test_faults.py::test_out_of_memory",),
        "1 per run, in an 8-cell run",
        "status oom, kind oom, MemoryError; the next cell runs",
        GOAL,
    ),
    Row(
        "every fault above in one run",
        (
            "tests/test_faults.py::test_exit_code_one_and_every_cell_recorded",
            "tests/test_faults.py::test_healthy_cells_before_and_after_faults",
            "tests/test_faults.py::test_no_half_written_files",
        ),
        "1 run of 8 cells, 6 faulty",
        "every cell recorded once, the healthy cells before and after ok, run finished, exit 1, every file parses",
        GOAL,
    ),
    Row(
        "one rank of a tensor-parallel cell raises",
        ("tests/worker/test_tp_group.py::test_a_failing_rank_fails_the_cell_with_its_error",),
        "1 per run, in a 6-cell run (tp_size 2 on the CPU, gloo)",
        "the whole group stopped; status failed, kind rank, the rank that failed first and its message; "
        "the other cells run",
        GOAL,
    ),
    Row(
        "a rank killed by a signal, its peers failing after it",
        ("tests/worker/test_tp_group.py::test_a_rank_killed_by_a_signal_is_the_cause",),
        "1 (the launcher's failure report, built by hand)",
        "the killed rank named as the cause (killed by SIGKILL), not the peer that failed in its collective",
        GOAL,
    ),
    Row(
        "one rank of a tensor-parallel cell hangs",
        ("tests/worker/test_tp_group.py::test_a_hanging_rank_times_out_and_no_rank_outlives_the_cell",),
        "1 per run, in a 6-cell run (tp_size 2 on the CPU, gloo)",
        "status timeout after cell_timeout_s; every rank and helper the run started is gone",
        GOAL,
    ),
    Row(
        "SIGTERM / SIGINT to the runner during a cell",
        ("tests/test_faults.py::test_signal_stops_the_run_in_order",),
        "2 (one per signal)",
        "the cell recorded interrupted (not charged), its process group killed, run.json interrupted, exit 143 / 130",
        "the running cell's partial measurement (it runs again on restart)",
    ),
    Row(
        "runner killed by SIGKILL while a worker runs",
        ("tests/test_faults.py::test_worker_dies_with_a_killed_runner",),
        "1",
        "the orphaned worker sees its runner gone and kills its own process group: nothing left running",
        "the running cell's attempt (recorded lost on restart, run again)",
    ),
    Row(
        "runner killed at random instants and restarted",
        ("tests/test_kill_resume.py::test_random_kills_then_restarts_yield_every_cell_once",),
        _times(
            const("tests.test_kill_resume", "TRIALS"),
            "kill-and-restart trials (half SIGTERM, half SIGKILL)",
            2,
        ),
        "after every kill every file parses; every finished run holds every planned cell exactly once, "
        "each measured to completion once; SIGTERM exits 143 and never costs an attempt",
        "the attempt running at a SIGKILL (charged, run again); nothing finished",
    ),
]

MF = "tests/test_model_faults.py::"
ML = "tests/test_memory_limit.py::"
MODEL_RUN = "1 config of 2 cells, in a run of 7 configs"
MODEL_FAULTS: list[Row] = [
    Row(
        "model directory with a truncated model.safetensors",
        (MF + "test_model_fault_is_named_in_words",),
        MODEL_RUN,
        "both cells failed, error kind model: SafetensorError, the reason says the file is truncated or corrupt "
        "and gives its size; not retried (the same files fail the same way); the configs after it run; exit 1",
        "those cells only",
    ),
    Row(
        "model directory whose config.json is not JSON",
        (MF + "test_model_fault_is_named_in_words",),
        MODEL_RUN,
        "failed, kind model, the reason names config.json and the JSON error position; not retried",
        "those cells only",
    ),
    Row(
        "model directory without tokenizer files",
        (MF + "test_model_fault_is_named_in_words",),
        MODEL_RUN,
        'failed, kind model, "no tokenizer" listing the files looked for (the library\'s own message blames '
        "a missing sentencepiece); not retried",
        "those cells only",
    ),
    Row(
        "model id that is not in the cache while offline",
        (
            MF + "test_model_fault_is_named_in_words",
            "tests/test_local_model.py::test_missing_hub_model_while_offline_fails_the_cell_not_the_run",
        ),
        MODEL_RUN,
        'failed, kind model, "not in the local cache (HF_HOME=...) and HF_HUB_OFFLINE=1 forbids a download"; '
        "not retried",
        "those cells only",
    ),
    Row(
        "model that ships its own code, trust_remote_code not set",
        (
            MF + "test_model_fault_is_named_in_words",
            MF + "test_remote_code_never_ran_without_trust",
            MF + "test_trust_remote_code_is_only_ever_the_config_value",
        ),
        MODEL_RUN + "; the same model trusted in another",
        "failed, kind model, the reason says it needs `trust_remote_code: true`; the model's code never ran "
        "(its import would write a marker file: absent); with the config's consent the same model loads and "
        "measures; no code path passes anything but the config's value",
        "those cells only; no code ran",
    ),
    Row(
        "all model faults in one run",
        (
            MF + "test_exit_code_one_and_every_run_finished",
            MF + "test_healthy_configs_after_the_broken_ones_run",
            MF + "test_model_fault_is_not_retried",
            MF + "test_no_half_written_files",
        ),
        "1 run of 7 configs x 2 cells, 5 configs broken",
        "every config's run finished with both cells recorded; the healthy configs after the broken ones ok on "
        "attempt 1; broken cells tried once; exit 1; no traceback; every file parses",
        GOAL,
    ),
    Row(
        "cell over its host-memory limit (cell_memory_limit_gb, RLIMIT_DATA)",
        (
            ML + "test_worker_over_its_limit_ends_oom_and_the_next_starts_clean",
            ML + "test_run_with_a_memory_limit",
            ML + "test_without_a_limit_the_worker_sets_none",
            ML + "test_is_oom_knows_every_allocator_failure",
        ),
        "3 (a big eager-attention cell at a 0.75 GiB limit: the worker alone, and whole runs with the limit "
        "from the file and from TFBENCH_CELL_MEMORY_LIMIT_GB)",
        "status oom: torch's allocator refused, the reason names the limit; the next (small) cell runs ok in a "
        "fresh process; exit 1",
        GOAL,
    ),
]

VF = "tests/test_volume_faults.py::"
FF = "tests/test_foreign_files.py::"
VOLUME_RUN = "1 run of 4 cells on a 4 MiB tmpfs"
STORAGE: list[Row] = [
    Row(
        "results volume full mid-run (ENOSPC)",
        (VF + "test_full_volume_mid_run_exits_4_and_the_same_command_continues",),
        VOLUME_RUN + ", filled after the first cell",
        'exit 4 naming the file, "No space left on device" and what to do; no traceback; every file parses, no '
        "temporary left; after space was freed the same command continued the same run: exit 0, every cell ok "
        "exactly once, none charged, the cells done before not run again",
        "the measurement of the cell in progress (run again once, not charged)",
    ),
    Row(
        "results volume turns read-only mid-run",
        (VF + "test_read_only_volume_mid_run_exits_4_and_the_same_command_continues",),
        VOLUME_RUN + ", remounted read-only after the first cell",
        'exit 4 with "Read-only file system"; after a read-write remount the same command continued: every '
        "cell ok exactly once, the cell in progress ended ok even with max_attempts 1",
        "the measurement of the cell in progress (run again once, not charged)",
    ),
    Row(
        "results volume read-only from the start; an invalid run id",
        (
            VF + "test_read_only_volume_at_start_exits_2_and_creates_nothing",
            VF + "test_bad_run_id_creates_nothing",
        ),
        "1 each",
        "exit 2 before any model loads, naming the output and the cause (or the run id and what is allowed); "
        "nothing created",
        "nothing",
    ),
    Row(
        "a truncated record where a planned cell's result belongs, when a run continues",
        (
            FF + "test_continuing_runs_the_corrupted_and_interrupted_cells_once_and_nothing_else",
            FF + "test_the_corrupted_record_is_moved_to_quarantine_never_overwritten",
        ),
        "1 run of 4 cells (stopped by SIGTERM, then planted)",
        "the file moved to quarantine/<name>.<UTC time>, bytes intact, never overwritten; that cell ran once more; "
        "the good cells were not touched; exit 0",
        "that cell's earlier result (unreadable before tfbench saw it)",
    ),
    Row(
        "foreign files in cells/: binary junk, notes.txt, a record under another cell's name",
        (
            FF + "test_foreign_files_that_do_not_collide_are_left_in_place",
            FF + "test_warnings_name_each_file",
            FF + "test_scan_cells_names_each_file_and_why",
        ),
        "3 files in the same run; each kind once more directly",
        "each skipped with a warning naming the file and why; left in place byte for byte",
        "nothing",
    ),
    Row(
        "strangers in the output directory: lost+found/, notes.txt, a directory without a run, a broken run.json",
        (FF + "test_strangers_in_the_output_do_not_disturb_run_selection",),
        "4 entries, in the same run",
        "the right run continued, no new run started, the strangers untouched",
        "nothing",
    ),
    Row(
        "the same foreign files read by report, compare, history, merge and push",
        (
            FF + "test_report_and_compare_skip_foreign_files_with_a_warning",
            FF + "test_history_skips_foreign_files_and_strangers_in_the_output",
            FF + "test_merge_skips_foreign_files_and_refuses_a_missing_cell",
            FF + "test_push_skips_foreign_files_and_uploads_none_of_them",
        ),
        "1 each",
        "each warns per file and goes on with the real records; merge refuses (exit 2, naming the file and the "
        "cell) when a planned cell's only record is corrupt; push uploads exactly the planned cells, no foreign byte",
        "nothing",
    ),
]

HI = "tests/test_hostile_input.py::"
SE = "tests/test_secrets.py::"
HOSTILE = "tests.test_hostile_input"
SECRETS = "tests.test_secrets"
REFUSED = "nothing: no run directory, no model loaded, the runner never started"


def _examples(module: str, *names: str, extra: str = "") -> Callable[[], str]:
    def text() -> str:
        n = sum(const(module, name)() for name in names)
        return f"{n} hypothesis examples" + (f" {extra}" if extra else "")

    return text


INPUT: list[Row] = [
    Row(
        "junk of every YAML/JSON type (text with control characters, huge and negative numbers, nan, inf, "
        "lists, nested maps, null) in 1-3 config fields, as YAML, JSON and JSONL, for `run` and `plan`",
        (HI + "test_junk_config_fields_exit_2_naming_the_field",),
        _examples(HOSTILE, "FIELD_JUNK_EXAMPLES"),
        "exit 2 naming the field, exactly when the config loader refuses the input; otherwise plan exits 0 "
        "and run reaches the start (a tripwire); never a traceback",
        REFUSED,
    ),
    Row(
        "33 odd strings (NUL, newline, unicode lookalikes, `~nosuchuser`, 300 and 5,000 characters, ...) in "
        "every string field, from the file, a variable and a flag",
        (HI + "test_every_odd_string_in_every_string_field",),
        "5 fields x 33 strings x 4 sources",
        "exit 0 or 2 with the field named; found and fixed: over-long names, `~nosuchuser` and a NUL in "
        "output crashed",
        REFUSED,
    ),
    Row(
        "raw junk config files: random bytes, invalid YAML, a list or scalar at the top, recursive aliases, "
        "nesting 1,200 deep; 5 MB values, 2,001-line JSONL with a bad last line",
        (HI + "test_junk_config_files_exit_2", HI + "test_huge_config_files_are_refused_quickly_and_briefly"),
        _examples(HOSTILE, "RAW_FILE_EXAMPLES", extra="+ 3 huge files"),
        "exit 2 naming the file (huge ones in under 0.5 s, with a message under 20 kB); found and fixed: "
        "deep nesting and recursive aliases crashed",
        REFUSED,
    ),
    Row(
        "YAML with Python tags (`!!python/object/apply:os.system`, `!!python/name`, `/new`, `/module`)",
        (HI + "test_yaml_python_tags_are_refused_and_never_executed",),
        "16",
        "refused as not valid YAML (the loader builds no Python object and refuses aliases); the command "
        "the tag names never ran (its marker file is absent)",
        "nothing; no code ran",
    ),
    Row(
        "junk TFBENCH_* variables, TFBENCH_SHARD / SHARD_COUNT / JOB_COMPLETION_INDEX / LOG_FORMAT / RUN_ID / "
        "FAULT, TFBENCH_CONFIG naming nothing or a directory of junk",
        (HI + "test_junk_environment_variables_exit_2_naming_the_variable",),
        _examples(HOSTILE, "ENV_JUNK_EXAMPLES"),
        "exit 2 naming the variable (or the file it points to)",
        REFUSED,
    ),
    Row(
        "junk `run` and `plan` flags, flags without their value",
        (
            HI + "test_junk_flags_exit_2_naming_the_flag",
            HI + "test_a_flag_without_its_value_is_an_argparse_error",
        ),
        _examples(HOSTILE, "FLAG_JUNK_EXAMPLES", extra="+ 3"),
        "exit 2 naming the flag",
        REFUSED,
    ),
    Row(
        "junk paths, refs and thresholds to compare / report / history / merge / push, hand-edited run.json "
        "and cell records; unwritable --html / --png",
        (HI + "test_junk_paths_and_refs_to_the_tools_exit_2", HI + "test_unwritable_report_paths_exit_2"),
        _examples(HOSTILE, "TOOL_JUNK_EXAMPLES", extra="+ 4 paths"),
        "exit 0, 1 or 2 with a message, never a traceback; no file changed",
        "nothing (the tools only read)",
    ),
    Row(
        "path traversal: `../x`, absolute paths, `a/../../b`, NUL, newline, backslash, lookalikes as run name, "
        "run id, revision, model id, push repo",
        (
            HI + "test_run_ids_and_names_cannot_leave_the_output_directory",
            HI + "test_any_accepted_run_id_resolves_inside_the_output_directory",
            HI + "test_paths_in_the_hub_repo_stay_in_their_folder",
            HI + "test_a_run_id_from_the_hub_cannot_lead_a_download_out_of_its_folder",
            HI + "test_a_local_model_directory_is_read_never_written",
        ),
        _examples(HOSTILE, "RUN_ID_EXAMPLES", "HUB_NAME_EXAMPLES", extra="+ 18 names x 7 sources + 5"),
        "exit 2 naming it; every accepted run id resolves inside the output directory and every Hub path "
        "stays one plain component; found and fixed: a trailing newline passed the name checks, a run id "
        "read from a Hub dataset was used in a download path unchecked",
        "nothing written inside or outside the output",
    ),
    Row(
        "the same kinds of input through the container entry (entrypoint.py, a real process)",
        (HI + "test_entry_refuses_junk_like_the_cli",),
        "11 processes",
        "exit 2, named, no traceback, no output directory",
        REFUSED,
    ),
]

SECRET_ROWS: list[Row] = [
    Row(
        "a planted token (HF_TOKEN, HUGGING_FACE_HUB_TOKEN) in whole runs, human and JSON logs: a failing cell "
        "whose error quotes it, TFBENCH_COMMIT set to it, pushes to a fake Hub with a 5xx retry and a refusal "
        "quoting it",
        (SE + "test_no_byte_anywhere_holds_the_token",),
        "2 runs",
        "absent (raw, URL-encoded, JSON-escaped, base64, a 16-character prefix) from every result file, worker "
        "log, stdout and stderr, and every file, commit and request the Hub received; every file still parses",
        "nothing: the failing cell is recorded with [REDACTED] in its reason",
    ),
    Row(
        "a token as a config value; in a variable's error; in a hand-edited run that is pushed; in a push "
        "error; in the log of a worker whose runner was killed by SIGKILL",
        (
            SE + "test_a_token_in_a_config_is_refused_and_not_echoed",
            SE + "test_a_token_in_an_error_message_of_a_variable_is_not_echoed",
            SE + "test_a_run_edited_by_hand_is_uploaded_without_the_token",
            SE + "test_push_errors_name_no_token",
            SE + "test_a_log_left_by_a_killed_runner_is_redacted_on_restart",
        ),
        "9",
        'a config value shaped like a token exits 2 ("tokens belong in HF_TOKEN") without echoing it; the '
        "others never show it; the killed runner's restart redacts the log it left",
        "nothing",
    ),
    Row(
        "redaction itself: any of 7 token shapes planted in random text, a secret variable's value in any "
        "form, and ordinary results text (cell ids, shas, paths, numbers, hub ids)",
        (
            SE + "test_a_token_planted_in_any_text_is_removed",
            SE + "test_a_hub_token_is_removed_even_inside_a_word",
            SE + "test_the_value_of_a_secret_variable_is_removed_wherever_it_is",
            SE + "test_ordinary_results_text_is_left_unchanged",
            SE + "test_which_variables_hold_secrets",
            SE + "test_escaped_forms_of_a_secret_are_removed_too",
            SE + "test_bearer_credentials_keep_the_scheme_word",
            SE + "test_looks_like_token",
            SE + "test_redact_bytes_and_files",
            SE + "test_log_lines_are_redacted",
            SE + "test_redacting_stream_passes_everything_else_through",
        ),
        _examples(
            SECRETS,
            "REDACT_PLANTED_EXAMPLES",
            "REDACT_ENV_EXAMPLES",
            "REDACT_ORDINARY_EXAMPLES",
            extra="+ 1,000 inside words",
        ),
        "every planted token removed; ordinary results text byte-identical (redaction cannot damage results)",
        "nothing",
    ),
    Row(
        "the container user",
        (
            "tests/image/test_image.py::test_runs_as_uid_1000",
            "tests/image/test_image.py::test_files_written_by_uid_1000",
        ),
        "1 (make test-image, in CI)",
        "the image runs as uid 1000, not root; the files it writes belong to uid 1000",
        "nothing",
    ),
]

SY = "tests/test_sync.py::"
SYNC_ROWS: list[Row] = [
    Row(
        "the machine replaced: the runner SIGKILLed mid-run, its disk deleted, the same command on an empty one",
        (SY + "test_a_replaced_machine_continues_from_the_sink",),
        "1 (5-cell run, killed after 2 cells reached the sink)",
        "the new machine waited out the dead one's lease, restored the run from the sink and finished it: every "
        "cell one record, the cells recorded before the kill not measured again (same start time and worker "
        "pid), nothing sent back",
        "the attempt running at the kill, and cells finished but not yet uploaded (run again)",
    ),
    Row(
        "the sink down for part of the run",
        (SY + "test_the_sink_down_for_part_of_the_run",),
        "1 (S3 server stopped after the first cell, restarted after two more)",
        "the cells went on, one warning; the pending records went up when the sink answered; exit 0, every cell in "
        "the sink",
        "nothing",
    ),
    Row(
        "the sink down from start to end",
        (SY + "test_a_sink_down_to_the_end_exits_3_and_the_next_invocation_catches_up",),
        "1",
        "the run measured and finished locally; exit 3 naming the sink and what is pending, no traceback; the next "
        "invocation found the run finished and uploaded the rest: exit 0",
        "nothing",
    ),
    Row(
        "shards without a shared directory; two machines on one run",
        (
            SY + "test_shards_merge_from_the_sink_without_a_shared_directory",
            SY + "test_two_machines_on_one_run_never_record_a_cell_twice",
        ),
        "1 each (2 shards on separate disks; 2 machines started on one run id)",
        "the last shard merged from the sink and wrote the merged run there (`tfbench merge URL` too); the second "
        "machine waited for the lease, saw it renewed and exited 2 naming the holder, having measured nothing",
        "nothing",
    ),
    Row(
        "credentials of the sink",
        (SY + "test_a_run_is_copied_to_the_sink_without_credentials",),
        "1",
        "the secret key used by every request is in no local file, no object in the sink and no output; the sink "
        "holds the same bytes as the results directory",
        "nothing",
    ),
]

SECTIONS: list[tuple[str, str, list[Row]]] = [
    (
        "Faults",
        "Each fault is injected into a multi-cell run executed as users run it (the container entry, "
        "in a subprocess). Goal column: " + GOAL + ".",
        FAULTS,
    ),
    (
        "Broken models and memory limits",
        "A run of several configs (a config directory), the broken ones first: each fault costs only the cells "
        "of its own config, and its reason says in words what is wrong with the files.",
        MODEL_FAULTS,
    ),
    (
        "The results volume",
        "A real tmpfs as the results volume, filled or remounted read-only while a run writes to it; files "
        "tfbench did not write planted in a run and beside it.",
        STORAGE,
    ),
    (
        "Hostile and careless input",
        "Property-based (hypothesis) over configs, environment variables and flags, mostly in-process with "
        "tripwires on the run's start so that an input that happens to be valid cannot start a run; a fixed "
        "seed per example set (HOSTILE_EXAMPLES_SCALE=N multiplies the counts with fresh examples). Every "
        "invalid input exits 2 with a message naming what was wrong.",
        INPUT,
    ),
    ("Secrets and the container user", "", SECRET_ROWS),
    (
        "A machine that does not come back (sync_to)",
        "Runs synced to a real S3-compatible server (moto on 127.0.0.1) while the machine, its disk or the sink "
        "fails; the container entry in subprocesses, as users run it.",
        SYNC_ROWS,
    ),
]

NOT_SURVIVED = [
    (
        "The results volume forced read-only while a worker runs (a kernel error remount, an NFS server gone)",
        "nothing can be written, so the cell's `running` record stays; the restart cannot tell this from a "
        "power loss mid-cell and charges the attempt (`lost`). A `mount -o remount,ro` cannot cause it: the "
        "kernel refuses while the runner holds the cell's log open.",
    ),
    (
        "A worker that cannot write its result while the runner can still write its smaller record",
        "(a volume a few kB from full) the cell is recorded `failed` (exit 3, no result) and charged; whenever "
        "the record write fails too, the run stops through the storage path (exit 4) instead.",
    ),
    (
        "A SIGKILL (or power loss) of the whole container while a cell runs",
        "the cell's partial measurement is lost and the attempt is charged (recorded `lost`, run "
        "again while max_attempts allows): the runner gets no chance to record anything, and a cell "
        "that brings the machine down must not loop forever.",
    ),
]


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _scale_section() -> list[str]:
    s = _load("scale")
    out = ["## Scale", ""]
    if s is None:
        return [*out, "Not measured yet: run `make bench`.", ""]
    p, m, r, d = s["plan"], s["merge"], s["report"], s["pandas"]

    def verdict(value: float, goal: float) -> str:
        return "meets" if value < goal else "MISSES"

    out += [
        f"Measured by `make bench` (benchmarks/scale.py) on {s['date']}, {s['machine']}; medians of {s['repeats']}, "
        "whole processes as a user runs them.",
        "",
        "| what | measured | goal | |",
        "|---|---|---|---|",
        f"| `tfbench plan` of {p['cells']:,} cells: text / `--json` | {p['text_s']:.2f} s / {p['json_s']:.2f} s "
        f"| < 1 s | {verdict(max(p['text_s'], p['json_s']), 1.0)} |",
        f"| `tfbench merge` of {m['cells']:,} cell results from {m['shards']} shards | {m['median_s']:.2f} s "
        f"| < 5 s | {verdict(m['median_s'], 5.0)} |",
        f"| `tfbench report` of the merged run | {r['median_s']:.2f} s | < 5 s | {verdict(r['median_s'], 5.0)} |",
        f"| `tfbench report --html` of the same run (figures capped at the first 400 cells) | {s['report_html_s']:.2f} s | | |",
        f"| `{d['call']}` | {d['median_s']:.2f} s, {d['rows']:,} rows x {d['columns']} columns | one call | meets |",
        "",
        f"The run directory holds {s['run_bytes'] / 1e6:.0f} MB ({s['cell_record_bytes'] / 1e3:.1f} kB per cell record).",
        "",
    ]
    return out


def _loop_section() -> list[str]:
    k = _load("kill_loop")
    out = ["## The long kill-and-restart loop", ""]
    if k is None:
        return [*out, "Not run yet: run `make bench`.", ""]
    codes = ", ".join(f"{code}: {n}" for code, n in k["exit_codes"].items())
    out += [
        f"`make bench` (benchmarks/kill_loop.py) on {k['date']}, {k['machine']}: {k['trials']} trials "
        f"(seed {k['seed']}), SIGTERM or SIGKILL chosen at random per trial, at a random instant "
        f"between {k['delay_s'][0]:g} s and {k['delay_s'][1]:g} s after the start (interpreter start-up, worker "
        f"server start, cells), on runs of {k['cells_per_run']} cells.",
        "",
        "| trials | runs finished and checked | cells checked, each exactly once | exit codes of the killed runner "
        "| attempts run again | lost |",
        "|---|---|---|---|---|---|",
        f"| {k['trials']} | {k['runs_completed']} | {k['cells_checked']} | {codes} | {k['lost_attempts']} cut by "
        f"SIGKILL, {k['interrupted_attempts']} stopped by SIGTERM | nothing finished |",
        "",
    ]
    return out


def _sink_loop_section() -> list[str]:
    k = (_load("sync") or {}).get("kill_loop")
    out = ["## The kill loop on empty machines", ""]
    if k is None:
        return [*out, "Not run yet: run `make bench`.", ""]
    codes = ", ".join(f"{code}: {n}" for code, n in k["exit_codes"].items())
    s = _load("sync") or {}
    out += [
        f"`make bench` (benchmarks/sync.py) on {s['date']}, {s['machine']}: {k['trials']} trials (seed {k['seed']}), "
        "each on a new, empty results directory with the run synced to an S3 server (moto on 127.0.0.1), "
        f"SIGTERM or SIGKILL at a random instant between {k['delay_s'][0]:g} s and {k['delay_s'][1]:g} s, the "
        "directory deleted after each kill; the next start restores the run from the sink.",
        "",
        "| trials | runs finished and checked in the sink | cells checked, each one record | exit codes of the killed "
        "runner | restored from the sink | attempts run again | measured twice |",
        "|---|---|---|---|---|---|---|",
        f"| {k['trials']} | {k['runs_checked']} | {k['cells_checked']} | {codes} | {k['restored']} | "
        f"{k['lost_attempts']} cut by SIGKILL, {k['interrupted_attempts']} stopped by SIGTERM | {k['kept_twice']} |",
        "",
    ]
    return out


def render() -> str:
    out = [
        "# Reliability",
        "",
        "What tfbench was made to survive, how often the suite tries it, and what it cost. Generated by "
        "`make reliability` from benchmarks/reliability.py; tests/test_reliability.py fails when a row names a "
        "test that does not exist, when a test of the fault suites has no row, or when this file differs "
        "from what the generator renders. Every row's test runs in `make test` (and so in CI).",
        "",
    ]
    for title, intro, rows in SECTIONS:
        out += [f"## {title}", "", *([intro, ""] if intro else [])]
        out.append("| fault or input | trials | what happened | what was lost | test |")
        out.append("|---|---|---|---|---|")
        for row in rows:
            tests = "<br>".join(
                f"`{t.split('::')[0].removeprefix('tests/')}::{t.split('::')[1]}`" for t in row.tests
            )
            out.append(f"| {row.fault} | {row.trials_text()} | {row.happened} | {row.lost} | {tests} |")
        out.append("")
    out += _loop_section()
    out += _sink_loop_section()
    out += _scale_section()
    out += ["## What cannot be survived", ""]
    for what, why in NOT_SURVIVED:
        out.append(f"- **{what}**: {why}")
    out.append("")
    return "\n".join(out)


def all_rows() -> list[Row]:
    return [row for _, _, rows in SECTIONS for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {DOC.name} (default: print)")
    args = parser.parse_args()
    text = render()
    if args.write:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
