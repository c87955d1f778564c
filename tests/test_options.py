"""The option table: one declaration per serve option, validation in one place, parser names and aliases,
and defaults that are written once."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

import vllm_mlx
from vllm_mlx.cli import build_parser, main
from vllm_mlx.config import SamplingDefaults, ServerConfig, server_config
from vllm_mlx.engine.config import EngineConfig
from vllm_mlx.options import DEFAULTS, OPTIONS, OptionError, check_settings, serve_parser, setting
from vllm_mlx.parsers.aliases import REASONING_PARSER_ALIASES, TOOL_PARSER_ALIASES
from vllm_mlx.parsers.registry import REASONING_PARSERS, TOOL_PARSERS
from vllm_mlx.profiles import CLIENT_PROFILES, SERVING_PROFILES

SRC = Path(vllm_mlx.__file__).parent

# Names users of the earlier vllm-mlx command line type for --tool-call-parser / --reasoning-parser.
SEED_NAMES = ("qwen", "llama", "deepseek", "kimi", "nemotron", "functionary", "liquid", "liquidai", "lfm", "granite",
              "mistral", "xlam", "glm47", "harmony", "gpt-oss", "deepseek_r1", "gpt_oss")


def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real console entry (`python -m vllm_mlx`)."""
    return subprocess.run([sys.executable, "-m", "vllm_mlx", *argv], capture_output=True, text=True, timeout=timeout)


def printed(capsys, *argv: str) -> dict:
    """`serve ... --print-config` through cli.main: the resolved settings, or SystemExit."""
    assert main(["serve", *argv, "--print-config"]) == 0
    return tomllib.loads(capsys.readouterr().out)


def values(**changes) -> dict:
    return {**DEFAULTS.as_dict(), **changes}


# -- parser names ----------------------------------------------------------------------------------

def test_print_config_refuses_an_unknown_tool_call_parser_listing_the_names():
    result = cli("serve", "--print-config", "--tool-call-parser", "bogus")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "--tool-call-parser: unknown tool-call parser 'bogus'" in lines[0]
    for name in ("auto", "none", *TOOL_PARSERS):
        assert name in lines[0]
    result = cli("serve", "--print-config", "--reasoning-parser", "bogus")
    assert result.returncode == 2 and all(name in result.stderr for name in REASONING_PARSERS)


@pytest.mark.parametrize("name", SEED_NAMES)
def test_earlier_tool_parser_names_map_to_a_parser_of_the_same_format(name, capsys):
    value = printed(capsys, "--tool-call-parser", name)["tool-call-parser"]
    assert value in TOOL_PARSERS
    assert value == TOOL_PARSER_ALIASES.get(name, name)


@pytest.mark.parametrize("name", SEED_NAMES)
def test_earlier_names_as_reasoning_parser_map_or_exit_2_naming_what_to_use(name, capsys):
    try:
        value = printed(capsys, "--reasoning-parser", name)["reasoning-parser"]
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vllm-mlx serve: error: --reasoning-parser:")
        assert "use none" in err or "--tool-call-parser" in err
    else:
        assert value in REASONING_PARSERS and value == REASONING_PARSER_ALIASES.get(name, name)


def test_alias_meanings():
    """Aliases map to the parser that reads the format the earlier name parsed."""
    expected = {"qwen": "qwen3_coder", "nemotron": "qwen3_coder", "llama": "llama3_json", "deepseek": "deepseek_v3",
                "deepseek_r1": "deepseek_v3", "kimi": "kimi_k2", "functionary": "functionary_v3", "liquid": "lfm2",
                "liquidai": "lfm2", "lfm": "lfm2", "gpt-oss": "openai", "gpt_oss": "openai"}
    assert {k: TOOL_PARSER_ALIASES[k] for k in expected} == expected
    assert set(TOOL_PARSER_ALIASES.values()) <= set(TOOL_PARSERS)
    assert set(REASONING_PARSER_ALIASES.values()) <= set(REASONING_PARSERS)
    assert not set(TOOL_PARSER_ALIASES) & set(TOOL_PARSERS)  # an alias never hides a registry name
    assert not set(REASONING_PARSER_ALIASES) & set(REASONING_PARSERS)


def test_parser_names_from_config_files_and_profiles(tmp_path):
    good = tmp_path / "ok.yaml"
    good.write_text("tool-call-parser: LLAMA\nreasoning_parser: deepseek\n")
    assert main(["serve", "--config", str(good), "--print-config"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('tool_call_parser = "bogus"\n')
    result = cli("serve", "--config", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"config file {bad}: 'tool_call_parser': unknown tool-call parser 'bogus'" in result.stderr


# -- validation in one place --------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(max_num_seqs=0), "--max-num-seqs must be at least 1 (got 0)"),
    (dict(checkpoint_stride=-1), "--checkpoint-stride must be 0 (off) or positive"),
    (dict(verify_cache_restores=1.5), "--verify-cache-restores must be a rate between 0 and 1"),
    (dict(batch_divergence_threshold=2.0), "--batch-divergence-threshold must be within 0..1"),
    (dict(default_top_p=0.0), "--default-top-p must be in (0, 1]"),
    (dict(memory_budget_fraction=0.0), "--memory-budget-fraction must be in (0, 1]"),
    (dict(rate_limit=0), "--rate-limit must be at least 1 request per minute"),
    (dict(max_tokens_cap=-1), "--max-tokens-cap must be 0 (no limit beyond the context budget) or positive"),
    (dict(mllm=True, text_only=True), "--mllm and --text-only contradict each other"),
    (dict(mcp_auto=True), "--mcp-auto needs --mcp-config"),
    (dict(engine_restarts=-1), "--engine-restarts must not be negative (got -1)"),
    (dict(engine_restarts=2), "--engine-restarts applies with --engine-process"),
    (dict(engine_restarts=0, engine_process=True, distributed=True), "--engine-restarts cannot be combined with "
     "--distributed: a distributed job's engine process is not restarted"),
    (dict(speculative="ngram", deterministic=True), "--speculative cannot be combined with --deterministic"),
    (dict(num_speculative_tokens=0), "--num-speculative-tokens must be at least 1 (got 0)"),
    (dict(num_speculative_tokens=3, speculative="off"), "--num-speculative-tokens applies with --speculative auto|"),
    (dict(speculative="off", draft_model="/m/d"), "--draft-model is for --speculative draft, not off"),
    (dict(speculative="draft"), "--speculative draft needs --draft-model MODEL"),
    (dict(speculative="ngram", draft_model="/m/d"), "--draft-model is for --speculative draft, not ngram"),
    (dict(draft_model="/m/d", deterministic=True), "--speculative cannot be combined with --deterministic"),
    (dict(models=["a=/m/a"], draft_model="/m/d"), "--draft-model applies to a single MODEL"),
    (dict(lora=["a"]), "--lora: give each adapter as NAME=PATH, not 'a'"),
    (dict(lora=["a=/nowhere"]), "--lora: LoRA adapter 'a': /nowhere is not an adapter folder"),
    (dict(lora=["a=/m/a", "a=/m/b"]), "--lora: adapter names must be unique: a"),
    (dict(max_loras=0), "--max-loras must be at least 1 (got 0)"),
    (dict(max_loras=2), "--max-loras applies with --lora NAME=PATH"),
    (dict(cors_origins=["*"], cors_allow_credentials=True), "cannot be combined with --cors-origins '*'"),
    (dict(model_ttl=60.0), "--model-ttl applies to multi-model serving"),
    (dict(models=["a=/m/a"], model="/m/b"), "either a MODEL argument or --models"),
    (dict(models=["just-a-name"]), "--models: a models entry must be NAME=MODEL"),
    (dict(profile="nope"), "--profile: unknown serving profile 'nope'"),
])
def test_checks_and_rules(changes, message):
    with pytest.raises(OptionError) as err:
        check_settings(values(**changes))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_errors_name_where_a_value_came_from(tmp_path):
    with pytest.raises(OptionError, match=r"^config file c.toml: 'max-num-seqs' must be at least 1 \(got 0\)$"):
        check_settings(values(max_num_seqs=0), {"max_num_seqs": "config file c.toml"}, {"max_num_seqs": "max-num-seqs"})
    with pytest.raises(OptionError, match=r"\(--mllm from profile mllm-default\)$"):
        check_settings(values(mllm=True, text_only=True), {"mllm": "profile mllm-default"})
    file = tmp_path / "serve.toml"
    file.write_text("max-num-seqs = 0\n")
    result = cli("serve", "--config", str(file), "--print-config")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr == f"vllm-mlx serve: error: config file {file}: 'max-num-seqs' must be at least 1 (got 0)\n"


def test_conversions_apply_to_every_layer():
    out = check_settings(values(max_tokens_cap=0, tool_call_parser="Qwen", reasoning_parser="gpt-oss"))
    assert (out["max_tokens_cap"], out["tool_call_parser"], out["reasoning_parser"]) == (None, "qwen3_coder",
                                                                                          "openai_gptoss")
    assert setting("no-prefix-cache", True, "x") == ("prefix_cache", False)
    assert setting("enable_prefix_caching", False, "x") == ("prefix_cache", False)
    assert setting("max-tokens", 3.0, "x") == ("max_tokens", 3)


def test_argument_errors_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--max-num-seqs", "many"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "invalid int value: 'many'" in err
    with pytest.raises(SystemExit, match="must be at least 1") as exc:
        main(["serve", "--max-num-seqs", "0", "--print-config"])
    assert exc.value.code == 2


# -- one declaration per option ------------------------------------------------------------------------

def test_every_option_is_a_flag_a_config_key_and_printed(capsys):
    help_text = subprocess.run([sys.executable, "-m", "vllm_mlx", "serve", "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "200"}).stdout
    settings = printed(capsys)
    for o in OPTIONS.values():
        for flag in o.option_strings:
            assert flag in help_text, flag
        if not o.cli_only:
            assert setting(o.name, o.default if o.default is not None else None, "x")[0] == o.name
            assert o.name.replace("_", "-") in settings or o.default is None


def test_defaults_are_the_tables():
    assert check_settings(DEFAULTS.as_dict()) == DEFAULTS.as_dict()  # every default passes its own checks
    parsed = vars(build_parser().parse_args(["serve"]))
    assert {name: parsed[name] for name in OPTIONS} == DEFAULTS.as_dict()
    assert vars(serve_parser().parse_args([])) == DEFAULTS.as_dict()
    assert server_config(DEFAULTS.as_dict()) == ServerConfig()
    engine = EngineConfig()
    for name in ("max_num_seqs", "max_num_batched_tokens", "deterministic", "prefix_cache", "cache_memory_fraction",
                 "prefix_block_size", "kv_cache_bits", "kv_cache_dir", "checkpoint_stride", "verify_cache_restores"):
        assert getattr(engine, name) == getattr(DEFAULTS, name), name
    assert engine.kv_cache_dir_bytes == DEFAULTS.kv_cache_dir_mb << 20
    assert SamplingDefaults() == SamplingDefaults(**{f.name: getattr(DEFAULTS, f"default_{f.name}")
                                                     for f in fields(SamplingDefaults)})


# Dataclasses whose fields are option values: none of them may write a default as a number.
OPTION_CLASSES = {"config.py": ("ServerConfig", "SamplingDefaults"), "engine/config.py": ("EngineConfig",),
                  "limits.py": ("Limits", "WatchdogConfig", "AccessConfig"), "media/decode.py": ("MediaLimits",),
                  "media/audio.py": ("AudioLimits",), "media/fetch.py": ("FetchPolicy",)}
NOT_OPTIONS = {"MediaLimits.video_max_seconds", "WatchdogConfig.interval_s", "FetchPolicy.max_redirects"}


def _literal(node: ast.AST | None) -> bool:
    """A number written in the source (``32``, ``4 << 30``, ``25 * 1024 * 1024``)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _literal(node.operand)
    return isinstance(node, ast.BinOp) and _literal(node.left) and _literal(node.right)


def _value(node: ast.AST) -> float:
    return eval(compile(ast.Expression(node), "<default>", "eval"), {})  # constants and operators only


def test_option_defaults_are_written_once():
    for path, classes in OPTION_CLASSES.items():
        tree = ast.parse((SRC / path).read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in classes):
            for stmt in cls.body:
                if isinstance(stmt, ast.AnnAssign) and f"{cls.name}.{stmt.target.id}" not in NOT_OPTIONS:
                    assert not _literal(stmt.value), f"{path}: {cls.name}.{stmt.target.id} restates a default"
    # elsewhere: no parameter or field named like an option repeats its default as a number (0 is also a
    # counter's start, as in EngineStats.max_num_seqs)
    numeric = {name for name, o in OPTIONS.items() if o.type in (int, float)}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(("options/", "testing/")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.arguments):
                named = zip([*node.posonlyargs, *node.args][-len(node.defaults):] if node.defaults else [],
                            node.defaults)
                pairs = [(a.arg, d) for a, d in named] + [(a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                pairs = [(node.target.id, node.value)]
            else:
                continue
            for name, default in pairs:
                restated = (name in numeric and _literal(default)
                            and _value(default) == OPTIONS[name].default != 0)
                assert not restated, f"{rel}:{default.lineno}: {name} restates a default"


def test_profiles_name_table_options():
    for profile in [*SERVING_PROFILES.values(), *CLIENT_PROFILES.values()]:
        for key, value in profile.settings.items():
            name, typed = setting(key, value, f"profile {profile.name}")
            assert name in OPTIONS
            check_settings(values(**{name: typed}))


# -- one context-length reader ---------------------------------------------------------------------------

def test_one_context_length_reader(tmp_path):
    from vllm_mlx.doctor import model_checks
    from vllm_mlx.models import context, embedding_worker, loader
    from vllm_mlx.operator_cli import context_hint

    assert loader.context_length is context.context_length
    assert context.declared_context_length({"text_config": {"max_position_embeddings": 777}}) == 777
    assert context.declared_context_length({"n_positions": 1024, "text_config": {"max_seq_len": 9}}) == 1024
    assert context.declared_context_length({"max_position_embeddings": True}) is None
    assert context.context_length({}) == context.FALLBACK_CONTEXT
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 1536}))
    assert context_hint(ServerConfig(model=str(tmp_path))) == 1536
    assert model_checks(str(tmp_path), False, None)[1]["context_length"] == 1536
    assert embedding_worker.EmbeddingModelSpec.from_config({"n_positions": 256}).max_tokens == 256
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("models/demo/") or rel == "models/context.py":  # the demo builder writes a config
            continue
        assert "max_position_embeddings" not in path.read_text(), f"{rel} reads the context window itself"
