from infl_cli.cli.app import entry

entry()
