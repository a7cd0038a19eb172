using System.Diagnostics;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// tcpdump on the underlay bridge of a test cluster, writing every TCP packet to a pcap file as it arrives
/// (immediate mode, unbuffered): what crossed the wire between the nodes, for the tests that assert what did not.
/// </summary>
internal sealed class UnderlayCapture
{
    private readonly Process _tcpdump;

    private UnderlayCapture(Process tcpdump) => _tcpdump = tcpdump;

    /// <summary>Starts the capture into <paramref name="pcap"/> and gives tcpdump a second to attach.</summary>
    public static async Task<UnderlayCapture> StartAsync(string underlayNetns, string pcap)
    {
        var tcpdump = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", underlayNetns,
            "tcpdump", "-i", "br0", "--immediate-mode", "-U", "-s", "0", "-B", "65536", "-w", pcap, "tcp"])
        { RedirectStandardError = true })!;
        await Task.Delay(1000);
        return new UnderlayCapture(tcpdump);
    }

    /// <summary>
    /// Stops with SIGTERM, not SIGKILL: tcpdump writes out what it still holds, so the file has the whole capture
    /// (SIGKILL lost its last packets). Killed only if it has not exited within 30 s.
    /// </summary>
    public async Task StopAsync()
    {
        using (_tcpdump)
        {
            Tmds.Linux.LibC.kill(_tcpdump.Id, Tmds.Linux.LibC.SIGTERM);
            using var stopped = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            try
            {
                await _tcpdump.WaitForExitAsync(stopped.Token);
            }
            catch (OperationCanceledException)
            {
                _tcpdump.Kill();
                await _tcpdump.WaitForExitAsync();
            }
        }
    }
}
