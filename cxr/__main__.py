from cxr.cli import main

main(prog_name="cardio")
