from bnexp.cli import main

main(prog_name="bnexp")
