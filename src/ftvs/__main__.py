from ftvs.cli import main

raise SystemExit(main())
