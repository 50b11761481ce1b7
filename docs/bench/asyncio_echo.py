"""An echo server in Python's asyncio, for `iomux bench --server`.

Usage: python3 asyncio_echo.py PORT  (listens on 127.0.0.1:PORT)
"""
import asyncio
import sys


async def handle(reader, writer):
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
