from sharpscope_cli.main import app

app(prog_name="sharpscope")
