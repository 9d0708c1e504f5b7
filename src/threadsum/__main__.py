from threadsum.cli import main

main()
