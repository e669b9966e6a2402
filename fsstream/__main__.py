from fsstream.cli import main

main()
