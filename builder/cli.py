"""`python build.py`: turn a GGUF (a file, or one fetched from Hugging Face) into one executable."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from pathlib import Path

import click

from runtime import __version__
from runtime.errors import FuroshikiError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PLATFORMS = ["linux-x86_64", "linux-arm64", "windows-x86_64", "macos-arm64"]


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


def _built_at() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress(total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=None, leave=False)


def make_manifest(name: str, title: str | None, defaults: dict, card, source: str, stub_info: dict) -> dict:
    import llama_cpp

    return {
        "name": name,
        "title": title or name,
        "defaults": {k: v for k, v in defaults.items() if v is not None},
        "model": {"source": source, "name": card.name, "architecture": card.architecture,
                  "n_params": card.n_params, "file_type": card.file_type, "context_length": card.context_length,
                  "chat_template": card.has_chat_template, "layout": card.layout()},
        "versions": {"furoshiki": __version__, "llama_cpp_python": llama_cpp.__version__,
                     "llama_cpp": f"vendored in llama-cpp-python {llama_cpp.__version__}"},
        "stub": stub_info,
        "built_at": _built_at(),
    }


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"],
                                                            "max_content_width": 100})
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), help="Local GGUF file.")
@click.option("--hf", "hf_repo", metavar="OWNER/REPO", help="Hugging Face repository to take the GGUF from.")
@click.option("--quant", help="With --hf: which quantisation, e.g. Q4_K_M (case-insensitive).")
@click.option("--file", "hf_file", help="With --hf: the exact GGUF file name.")
@click.option("--revision", help="With --hf: branch, tag or commit [default: main].")
@click.option("--name", help="Executable name, e.g. mymodel (.exe is added for Windows stubs).")
@click.option("--out", default="dist", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--title", help="Title shown on the chat page [default: the name].")
@click.option("--system-prompt", help="Default system prompt of the chat page.")
@click.option("--ctx-size", type=click.IntRange(16, 1 << 22), help="Default context size.")
@click.option("--port", type=click.IntRange(1, 65535), help="Default port [8080].")
@click.option("--temperature", type=click.FloatRange(0, 5), help="Default temperature of the chat page.")
@click.option("--max-tokens", type=click.IntRange(1), help="Default max tokens of the chat page.")
@click.option("--stub", "stub_path", type=click.Path(exists=True, dir_okay=False),
              help="Pack into this runtime stub instead of the host's (built and cached on demand).")
@click.option("--platform", "platform_name", type=click.Choice(["host", *PLATFORMS, "all"]), default="host",
              show_default=True, help="Which platform to build for; all: every stub found in --stubs-dir.")
@click.option("--stubs-dir", type=click.Path(exists=True, file_okay=False),
              help="Folder of release stubs (furoshiki-runtime-<platform>[.exe]) for --platform.")
@click.option("--sidecar", is_flag=True, help="Keep the model as NAME.gguf beside the executable.")
@click.version_option(__version__, prog_name="furoshiki build")
@click.pass_context
def cli(ctx: click.Context, model_path, hf_repo, quant, hf_file, revision, name, out, title, system_prompt,
        ctx_size, port, temperature, max_tokens, stub_path, platform_name, stubs_dir, sidecar) -> None:
    """Build one executable from a GGUF:

    \b
      python build.py --model model.gguf --name mymodel
      python build.py --hf owner/repo --quant Q4_K_M --name mymodel
      python build.py --model m.gguf --name mymodel --platform all --stubs-dir stubs/
      python build.py inspect FILE [--json]
      python build.py stub [--list]
    """
    if ctx.invoked_subcommand is not None:
        return
    if not (model_path or hf_repo):
        raise click.UsageError("give --model PATH or --hf OWNER/REPO (see --help)")
    if model_path and hf_repo:
        raise click.UsageError("give either --model or --hf, not both")
    if not name:
        raise click.UsageError("--name is required, e.g. --name mymodel")
    if not NAME_RE.fullmatch(name):
        raise click.UsageError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (no paths)")
    if hf_repo is None and (quant or hf_file or revision):
        raise click.UsageError("--quant, --file and --revision go with --hf")

    from builder import hub
    from builder.gguf_facts import read_model_card

    if hf_repo:
        fetched = hub.download(hf_repo, quant=quant, filename=hf_file, revision=revision)
        gguf, source = fetched.path, fetched.source
        _echo(f"model: {source}")
    else:
        gguf, source = Path(model_path), f"file:{Path(model_path).name}"
    card = read_model_card(gguf)
    if ctx_size and card.context_length and ctx_size > card.context_length:
        _echo(f"note: --ctx-size {ctx_size} is more than the {card.context_length} the model was trained for")

    targets = _stubs_for(platform_name, stub_path, stubs_dir)
    defaults = {"system_prompt": system_prompt, "temperature": temperature, "ctx_size": ctx_size, "port": port,
                "max_tokens": max_tokens}
    several = len(targets) > 1
    for platform_tag, (stub_file, stub_info) in targets.items():
        folder = Path(out) / platform_tag if several else Path(out)
        _pack_one(name, title, defaults, card, source, gguf, stub_file, stub_info, folder, sidecar, platform_tag)


def _stubs_for(platform_name: str, stub_path: str | None, stubs_dir: str | None) -> dict:
    """{platform: (stub file, provenance)} for this build."""
    from builder import stub

    if stub_path:
        if platform_name == "all":
            raise click.UsageError("--platform all takes its stubs from --stubs-dir, not --stub")
        return {platform_name: (Path(stub_path), {"origin": "given", "file": Path(stub_path).name})}
    wanted = PLATFORMS if platform_name == "all" else [stub.platform_tag() if platform_name == "host"
                                                       else platform_name]
    found = {}
    for tag in wanted:
        candidate = Path(stubs_dir) / stub.stub_name(tag) if stubs_dir else None
        if candidate is not None and candidate.is_file():
            found[tag] = (candidate, {"origin": "release stub", "file": candidate.name, "platform": tag})
        elif tag == stub.platform_tag() and platform_name != "all":
            info = stub.build_stub(log=_echo)
            found[tag] = (Path(info.path), {"origin": "built here", "platform": info.platform, "key": info.key})
        elif platform_name != "all":
            where = f"in {stubs_dir}" if stubs_dir else "(pass --stubs-dir DIR)"
            raise click.UsageError(f"no stub for {tag} {where}: download {stub.stub_name(tag)} from a furoshiki "
                                   "release, or build it on that platform with `python build.py stub`")
    if not found:
        raise click.UsageError(f"no stubs named furoshiki-runtime-<platform> in {stubs_dir}")
    missing = [t for t in wanted if t not in found]
    if missing:
        _echo(f"note: no stub in {stubs_dir} for {', '.join(missing)}; building the others")
    return found


def _pack_one(name, title, defaults, card, source, gguf, stub_file, stub_info, folder, sidecar, platform_tag):
    from builder import pack
    from builder.gguf_facts import human_bytes

    with open(stub_file, "rb") as f:
        kind = pack.stub_format(f.read(4))
    exe_name = name + ".exe" if kind == "pe" and not name.lower().endswith(".exe") else name
    gguf_size = gguf.stat().st_size
    if kind == "pe" and not sidecar and pack.needs_sidecar_for_windows(stub_file.stat().st_size, gguf_size):
        sidecar = True
        _echo(f"note: Windows refuses executables of 4 GiB or more, so the model goes beside it: "
              f"{exe_name} + {name}.gguf (ship both, in the same folder)")
    if kind == "macho" and stub_file.stat().st_size + gguf_size + pack.EXE_MARGIN >= pack.WINDOWS_EXE_LIMIT:
        raise FuroshikiError("macOS executables must stay under 4 GiB (32-bit Mach-O file offsets); "
                             "pick a smaller quantisation for macOS")
    manifest = make_manifest(name, title, defaults, card, source, stub_info)
    target = folder / exe_name
    with _progress(gguf_size, f"packing {platform_tag}") as bar:
        result = pack.pack(stub_file, gguf, target, manifest, sidecar=sidecar, progress=bar.update)
    size = target.stat().st_size
    _echo(f"built {target}: {human_bytes(size)} (stub {human_bytes(stub_file.stat().st_size)}, "
          f"model {human_bytes(gguf_size)}) in {result.seconds:.1f} s")
    if result.sidecar:
        _echo(f"      {result.sidecar}: the model, keep it next to {exe_name}")
    for note in result.notes:
        _echo(f"note: {note}")
    _echo(f"model sha256 {result.sha256}")
    if platform_tag in ("host", _host()):
        _echo(f"run it: {target if target.is_absolute() else './' + str(target)}")


def _host() -> str:
    from builder.stub import platform_tag

    return platform_tag()


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(file: str, as_json: bool) -> None:
    """Describe a GGUF file or a built executable."""
    from builder.gguf_facts import card_rows, read_model_card
    from builder.pack import PackError, stub_format
    from runtime import packed

    with open(file, "rb") as f:
        head = f.read(4)
    try:
        stub_format(head)
        is_executable = True
    except PackError:
        is_executable = False
    if not is_executable:  # a GGUF, or something read_model_card will name as not one
        card = read_model_card(file)
        if as_json:
            click.echo(json.dumps(card.to_dict(), indent=2, ensure_ascii=False))
            return
        for key, value in card_rows(card):
            click.echo(f"{key:<28}{value}")
        return
    data = packed.info(packed.Embedded(Path(file).resolve()))
    click.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else packed.format_info(data))


@cli.command(name="stub")
@click.option("--list", "list_only", is_flag=True, help="Show the stubs cached on this machine.")
@click.option("--force", is_flag=True, help="Rebuild even if a cached stub matches.")
@click.option("--variant", default="", metavar="NAME", help="Name suffix for a GPU variant, e.g. cuda.")
def stub_command(list_only: bool, force: bool, variant: str) -> None:
    """Build (or list) the runtime stub for this platform."""
    from builder import stub

    if list_only:
        stubs = stub.list_stubs()
        if not stubs:
            click.echo(f"no stubs cached in {stub.cache_root() / 'stubs'}")
        for s in stubs:
            click.echo(f"{s.platform:<16} {s.size / 1e6:6.1f} MB  {s.built_at}  {s.origin:<10}  {s.path}")
        return
    info = stub.build_stub(force=force, log=_echo, variant=variant)
    click.echo(info.path)


def main(argv: list[str] | None = None) -> None:
    from runtime.cli import run_reporting_errors

    run_reporting_errors(lambda: cli.main(args=argv, prog_name="python build.py", standalone_mode=False))
