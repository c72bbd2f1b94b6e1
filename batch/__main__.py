from batch.main import main

main()
