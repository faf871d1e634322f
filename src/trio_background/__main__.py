from ._cli import leave, main

leave(main())
