using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Weft.Gateway;
using Xunit.Abstractions;

namespace Weft.Tests.Gateway;

/// <summary>
/// Clients that hold the gateway's resources on purpose: slowloris on the request head is cut after the
/// headers timeout while other clients are still served.
/// </summary>
public class GatewayAbuseTests(ITestOutputHelper output)
{
    private static readonly GatewayOptions Impatient = new()
    {
        RequestHeadersTimeout = TimeSpan.FromSeconds(2),
        MinDataRateGrace = TimeSpan.FromSeconds(2),
    };

    private static async Task<(GatewayLoopback Gateway, TrafficBackend Backend)> StartAsync(GatewayOptions options)
    {
        var gateway = new GatewayLoopback();
        var backend = await TrafficBackend.StartAsync("traffic");
        await gateway.StartAsync(GatewayStreamingTests.Yaml(backend, GatewayLoopback.TlsSecret("default", "edge-tls", "edge.example").SecretYaml), options);
        return (gateway, backend);
    }

    /// <summary>Writes <paramref name="head"/>, then one more byte of <paramref name="trickle"/> every 300 ms; how long until the gateway closed the connection, and what it answered.</summary>
    private static async Task<(TimeSpan ClosedAfter, string Answer)> TrickleAsync(int port, string head, string trickle)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, port);
        var stream = tcp.GetStream();
        var watch = Stopwatch.StartNew();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head));
        var answer = new StringBuilder();
        var reading = Task.Run(async () =>
        {
            var buffer = new byte[4096];
            try
            {
                int read;
                while ((read = await stream.ReadAsync(buffer)) > 0)
                {
                    answer.Append(Encoding.ASCII.GetString(buffer, 0, read));
                }
            }
            catch (IOException)
            {
                // reset: closed too
            }
        });
        for (var i = 0; !reading.IsCompleted && watch.Elapsed < TimeSpan.FromSeconds(90); i++)
        {
            try
            {
                await stream.WriteAsync(Encoding.ASCII.GetBytes(trickle[(i % trickle.Length)..((i % trickle.Length) + 1)]));
            }
            catch (IOException)
            {
                break;
            }

            await Task.WhenAny(reading, Task.Delay(300));
        }

        await Task.WhenAny(reading, Task.Delay(TimeSpan.FromSeconds(30)));
        Assert.True(reading.IsCompleted, $"the gateway still holds a slowloris connection after {watch.Elapsed}");
        return (watch.Elapsed, answer.ToString());
    }

    [Fact]
    public async Task SlowlorisOnTheRequestHead_IsDisconnectedAfterTheHeadersTimeout_WhileOthersAreServed()
    {
        var (gateway, backend) = await StartAsync(Impatient);
        await using var _ = gateway;
        await using var __ = backend;

        var slow = TrickleAsync(gateway.Server.HttpEndpoint!.Port, "GET / HTTP/1.1\r\nHost: x.example\r\n", "X-Slow: a\r\n");
        Assert.Equal(HttpStatusCode.OK, await gateway.StatusAsync("x.example", "/"));
        var (closedAfter, answer) = await slow;

        output.WriteLine($"closed after {closedAfter}: {answer}");
        Assert.True(closedAfter >= TimeSpan.FromSeconds(1.5), $"closed after {closedAfter}, before the 2 s timeout");
        Assert.True(answer.Length == 0 || answer.StartsWith("HTTP/1.1 408", StringComparison.Ordinal), answer);
    }
}
