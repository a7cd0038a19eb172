using System.Runtime.InteropServices;

namespace Weft.Bench;

/// <summary>
/// Ctrl-C and SIGTERM during a benchmark: the process stays alive and <see cref="Token"/> is cancelled, so
/// the run unwinds through its disposals and agents, nginx, pins, namespaces and cgroups all go.
/// </summary>
internal sealed class BenchInterrupt : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly PosixSignalRegistration _interrupt;
    private readonly PosixSignalRegistration _term;

    /// <param name="saying">What the benchmark tells the user it does now, e.g. "stopping, cleaning up".</param>
    public BenchInterrupt(string saying)
    {
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            Console.Error.WriteLine($"weft-bench: {saying}");
            _stop.Cancel();
        }

        _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    public CancellationToken Token => _stop.Token;

    public bool IsCancellationRequested => _stop.IsCancellationRequested;

    public void Dispose()
    {
        _interrupt.Dispose();
        _term.Dispose();
        _stop.Dispose();
    }
}
