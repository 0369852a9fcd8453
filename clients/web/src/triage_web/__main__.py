from triage_web.cli import main

main()
