/** A fixed-capacity ring buffer: pushing onto a full ring drops the oldest item. Bounded memory. */
export class Ring<T> {
  private items: (T | undefined)[];
  private start = 0;
  size = 0;
  /** Items ever dropped off the old end. */
  evicted = 0;

  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError(`ring capacity must be >= 1, got ${capacity}`);
    this.items = new Array(capacity);
  }

  push(item: T): void {
    if (this.size < this.capacity) {
      this.items[(this.start + this.size) % this.capacity] = item;
      this.size++;
    } else {
      this.items[this.start] = item;
      this.start = (this.start + 1) % this.capacity;
      this.evicted++;
    }
  }

  /** i-th oldest item (0 = oldest); negative i counts from the newest (-1 = newest). */
  at(i: number): T | undefined {
    if (i < 0) i += this.size;
    if (i < 0 || i >= this.size) return undefined;
    return this.items[(this.start + i) % this.capacity];
  }

  last(): T | undefined {
    return this.at(-1);
  }

  clear(): void {
    this.items = new Array(this.capacity);
    this.start = 0;
    this.size = 0;
    this.evicted = 0;
  }

  toArray(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.size; i++) out.push(this.at(i)!);
    return out;
  }
}
