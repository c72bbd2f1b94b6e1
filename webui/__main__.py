from webui.main import main

main()
