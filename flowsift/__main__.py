from flowsift.cli import main

main()
