from qpass.cli import main

raise SystemExit(main())
