using System.Net.Sockets;
using System.Runtime.CompilerServices;

namespace Weft.Tests.Proxy;

/// <summary>An app for the in-process proxy tests: echoes every connection on the listener, then half-closes.</summary>
internal static class LoopbackEcho
{
    /// <param name="open">Counts the connections it holds, when given.</param>
    public static async Task ServeAsync(Socket listener, StrongBox<int>? open = null)
    {
        while (true)
        {
            Socket peer;
            try
            {
                peer = await listener.AcceptAsync();
            }
            catch (Exception e) when (e is ObjectDisposedException or SocketException)
            {
                return;
            }

            if (open is not null)
            {
                Interlocked.Increment(ref open.Value);
            }

            _ = Task.Run(async () =>
            {
                using (peer)
                {
                    var buffer = new byte[4096];
                    try
                    {
                        int n;
                        while ((n = await peer.ReceiveAsync(buffer)) > 0)
                        {
                            await peer.SendAsync(buffer.AsMemory(0, n));
                        }

                        peer.Shutdown(SocketShutdown.Send);
                    }
                    catch (SocketException)
                    {
                    }
                }

                if (open is not null)
                {
                    Interlocked.Decrement(ref open.Value);
                }
            });
        }
    }
}
