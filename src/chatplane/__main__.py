from chatplane.cli import main

main()
