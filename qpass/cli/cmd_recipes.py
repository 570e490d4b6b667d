"""``qpass recipes``: the presets and the plugins found through the registries."""

from __future__ import annotations

import argparse
import sys

from qpass.cli.common import EXIT_CODES_HELP, EXIT_OK

EXAMPLES = """examples:
  qpass recipes                          # presets, policies, passes, observers, models
  qpass recipes --show w8a8_dynamic      # a preset as YAML: a starting point for a recipe file
  qpass recipes --show w8a16 --format toml > my.toml

Plugins come from the entry-point groups qpass.recipes, qpass.policies, qpass.passes,
qpass.observers and qpass.models of installed packages.

""" + EXIT_CODES_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    q = sub.add_parser("recipes", help="list presets and plugins (policies, passes, observers)",
                       description="List the recipe presets and every registered plugin.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--show", metavar="NAME|FILE", default=None,
                   help="print one recipe (a preset or a file) in the recipe-file schema")
    q.add_argument("--format", choices=("yaml", "toml", "json"), default="yaml",
                   help="format for --show (default: %(default)s)")
    return q


def _first_line(obj: object) -> str:
    doc = getattr(obj, "description", "") or (getattr(obj, "__doc__", "") or "")
    return " ".join(doc.strip().split("\n\n")[0].split())


def _origin(obj: object) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return "built-in" if module.startswith("qpass") else f"plugin ({module})"


def run(args: argparse.Namespace) -> int:
    import qpass  # noqa: F401  (registers the built-in observers, policies and passes)
    from qpass.eval.models import MODELS
    from qpass.observe import OBSERVERS
    from qpass.passes import PASSES
    from qpass.policy import POLICIES
    from qpass.recipes import RECIPES

    if args.show:
        from qpass.cli.cmd_quantize import resolve_cli_recipe
        from qpass.recipe_files import recipe_to_text

        sys.stdout.write(recipe_to_text(resolve_cli_recipe(args.show), f".{args.format}"))
        return EXIT_OK
    for title, registry in (("recipes (presets)", RECIPES), ("policies", POLICIES),
                            ("passes", PASSES), ("observers", OBSERVERS), ("models", MODELS)):
        print(f"{title}  [entry points: {registry.entry_point_group}]")
        for name in registry.names():
            obj = registry.get(name)
            print(f"  {name:<16} {_origin(obj):<10} {_first_line(obj)}"[:150].rstrip())
        print()
    return EXIT_OK
