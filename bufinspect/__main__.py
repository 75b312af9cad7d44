from bufinspect.cli import main

main()
