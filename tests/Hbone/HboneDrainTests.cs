using System.Text;
using Weft.Hbone;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>
/// A server connection told to drain (its agent is being replaced) says GOAWAY: the stream already open
/// carries on to its end, the client opens no new stream on it, and the connection ends after the last.
/// </summary>
public class HboneDrainTests
{
    [Fact]
    public async Task Drain_OpenStreamFinishes_ClientTakesNoNewStream_ConnectionEndsAfterTheLast()
    {
        var (clientStream, serverStream) = await SocketPairAsync();
        using var drain = new CancellationTokenSource();
        Task server = HboneServer.RunConnectionAsync(serverStream, EchoHandler, QuietSettings, CancellationToken.None, drain.Token);
        await using HboneClientConnection client = await HboneClientConnection.StartAsync(clientStream, QuietSettings, CancellationToken.None);

        HboneStream open = await client.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None).WaitAsync(Patience);
        await WriteAsync(open.Output, "before the drain, ");
        drain.Cancel();

        // The GOAWAY reaches the client: the pool would dial a new tunnel for the next connection.
        var deadline = DateTime.UtcNow + Patience;
        while (client.CanOpenStream && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }

        Assert.False(client.CanOpenStream, "the client never learned the connection is going away");
        Assert.False(server.IsCompleted, "the server ended the connection with a stream still open");

        await WriteAsync(open.Output, "and after it");
        await open.Output.CompleteAsync();
        Assert.Equal("before the drain, and after it", Encoding.UTF8.GetString(await ReadToEndAsync(open.Input).WaitAsync(Patience)));
        await open.DisposeAsync();

        await server.WaitAsync(Patience);
        await client.Completion.WaitAsync(Patience);
    }
}
