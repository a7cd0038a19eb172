using System.Net.Sockets;

namespace Weft.Tests.Proxy;

/// <summary>An app for the in-process proxy tests: echoes every connection on the listener, then half-closes.</summary>
internal static class LoopbackEcho
{
    public static async Task ServeAsync(Socket listener)
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
            });
        }
    }
}
