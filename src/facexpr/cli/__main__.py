from facexpr.cli import main

main()
